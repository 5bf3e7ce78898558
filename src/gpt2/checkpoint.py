"""Checkpoint I/O: one loader (weights only, one-line errors) and one atomic saver.

A training checkpoint holds model, optimizer, scheduler and scaler state, the
step, tokens seen, RNG states and both configs; a final `model.pt` holds the
model and the configs only. Both load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import queue
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from gpt2 import UserError
from gpt2.files import atomic_path, remove_stale_temps
from gpt2.model import GPT, GPTConfig


def load(path: str | Path, label: str = "") -> dict:
    """A state dict saved by this project; a missing, truncated or code-carrying file is a UserError."""
    path = Path(path)
    label = f"{label} {path}" if label else str(path)
    if not path.is_file():
        raise UserError(f"{label}: no such file; train it first (rule train)")
    try:
        # mmap: tensors are read from the file as they are used, so a resume holds no second copy of the
        # weights and optimizer moments in host memory per process (the page cache is shared on a node).
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated files, pickles with code, non-checkpoints all land here
        raise UserError(f"{label}: not a loadable checkpoint ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise UserError(f"{label}: not a gpt2 checkpoint (no model/model_config entries)")
    return state


def save(state: dict, path: str | Path) -> None:
    """torch.save through a temp file; a failed write (full disk) leaves `path` as it was."""
    try:
        with atomic_path(path) as tmp:
            torch.save(to_host(state, copy=False), tmp)  # GPU tensors saved as host ones load anywhere
    except RuntimeError as exc:  # torch's zip writer reports write errors as RuntimeError
        raise UserError(f"could not write {path} ({str(exc).splitlines()[0][:80]}); is the disk full? "
                        "Earlier checkpoints are kept") from None


def load_model(path: str | Path, device: torch.device, label: str = "") -> tuple[GPT, dict]:
    """The model of a model.pt or checkpoint on `device`, and the whole saved state."""
    state = load(path, label)
    model = GPT(GPTConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(device), state


def check_architecture(cfg: GPTConfig, expect: dict, source: Path) -> None:
    """Dims a user named (flags) must agree with the checkpoint, which is what gets used."""
    for name, value in expect.items():
        if value is not None and value != getattr(cfg, name):
            raise UserError(f"--{name} {value} does not match the checkpoint's {getattr(cfg, name)} ({source}); "
                            "drop the flag or pass the right model")


# --- a training run's folder of step_NNNNNNN.pt files ------------------------------------


STEP_FILE = re.compile(r"step_(\d+)\.pt")
# What a training run writes in its checkpoint folder (and beside model.pt): the temp files of
# these names that a killed run left are removed at the next start.
RUN_FILES = (STEP_FILE.pattern, r"best\.pt", r"model\.pt", r"metrics\.csv")


def paths(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, newest (highest step number) first."""
    found = [(int(m[1]), p) for p in Path(folder).glob("step_*.pt") if (m := STEP_FILE.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


@contextlib.contextmanager
def holding(folder: Path) -> Iterator[None]:
    """Hold `folder` for one training run: a second run into it is refused, naming the holder. Stale temp
    files of a run that was killed are removed once the folder is held (they cannot be a live run's).

    The lock is `flock` on `.lock`; on file systems without it (Lustre and NFS mounts without
    flock support answer ENOSYS, EOPNOTSUPP or ENOLCK) it is the file `.lock.held`, created
    exclusively, naming its holder; one left by a process that is gone (same host) is taken over.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    with open(folder / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock = None
        except BlockingIOError:
            fh.seek(0)
            _refuse(folder, fh.read().strip())
        except OSError as exc:
            if exc.errno not in NO_FLOCK:
                raise
            print(f"{folder}: the file system has no flock ({os.strerror(exc.errno)}); holding the folder by "
                  "the exclusively created file .lock.held instead", file=sys.stderr)
            lock = _hold_by_file(folder / ".lock.held", holder)
        fh.seek(0)
        fh.truncate()
        fh.write(holder + "\n")
        fh.flush()
        remove_stale_temps(folder, RUN_FILES)
        try:
            yield
        finally:
            fh.truncate(0)
            if lock is not None:
                lock.unlink(missing_ok=True)


NO_FLOCK = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)


def _refuse(folder: Path, holder: str) -> None:
    raise UserError(f"{folder} is in use by a training run ({holder or 'another process'}); wait for it to end "
                    "or stop it, or train into another folder") from None


def _hold_by_file(lock: Path, holder: str) -> Path:
    """Create `lock` exclusively with `holder` in it; take it over when it names a dead process of this host."""
    for _ in range(2):
        try:
            with open(lock, "x") as fh:
                fh.write(holder + "\n")
            return lock
        except FileExistsError:
            held = lock.read_text().strip()
            if not _holder_is_gone(held):
                _refuse(lock.parent, held)
            print(f"{lock}: its holder ({held}) is gone; taking it over", file=sys.stderr)
            lock.unlink(missing_ok=True)
    _refuse(lock.parent, lock.read_text().strip())


def _holder_is_gone(held: str) -> bool:
    """`pid N on HOST ...` names a process of this host that no longer runs (another host's: unknown, kept)."""
    match = re.match(r"pid (\d+) on (\S+) ", held)
    if not match or match[2] != socket.gethostname():
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def load_training(path: Path) -> dict:
    """One training checkpoint, as --from_checkpoint names it."""
    state = load(path, "--from_checkpoint")
    if "optimizer" not in state:
        raise UserError(f"--from_checkpoint {path}: not a training checkpoint (use --from_pretrained for a model)")
    print(f"resuming from {path} (step {state['step']})", file=sys.stderr)
    return state


def load_latest(folder: Path) -> dict | None:
    """The newest checkpoint in `folder` that loads; a damaged one is reported and skipped."""
    for path in paths(folder):
        try:
            state = load(path)
        except UserError as exc:
            print(f"skipping unreadable checkpoint {path}: {exc}", file=sys.stderr)
            continue
        print(f"resuming from {path} (step {state['step']})", file=sys.stderr)
        return state
    return None


def save_rotating(folder: Path, state: dict, keep: int) -> Path:
    """Save `state` as step_NNNNNNN.pt and drop all but the newest `keep`."""
    path = Path(folder) / f"step_{state['step']:07d}.pt"
    save(state, path)
    for old in paths(folder)[keep:]:
        old.unlink()
    return path


# --- writing while training goes on ----------------------------------------------------


def to_host(value: Any, copy: bool = True) -> Any:
    """A (nested) state dict with every tensor in host memory: copied, detached from training (`copy`), or
    moved only where it lives on another device."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=copy)
    if isinstance(value, dict):
        return {k: to_host(v, copy) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_host(v, copy) for v in value)
    return value


class Writer:
    """Checkpoint writes in a background thread, in the order they were asked for.

    The training loop pays for a copy of the state to host memory (a GPU checkpoint of GPT-2 small
    with its AdamW moments is ~1.1 GB: a fraction of a second) instead of serialising and fsyncing
    it. Each write is still atomic. At most `max_pending` host copies exist at once (queued or being
    written): a submit beyond that waits for the oldest write to finish, so host memory stays bounded.
    A failed write is raised in the training thread by the next `check()` or `submit()`, so a run
    with a full disk stops at its next step instead of training on without checkpoints; `wait()`
    returns once all writes are on disk.
    """

    def __init__(self, max_pending: int = 2):
        self._queue: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def submit(self, write: Callable[[dict], Any], state: dict) -> None:
        """Run `write(copy of state)` in the background; the live `state` may change right after."""
        self.check()
        self._slots.acquire()  # before the copy: waiting here is what bounds the host copies
        self._queue.put((write, to_host(state)))

    def _work(self) -> None:
        while True:
            write, state = self._queue.get()
            try:
                if self._error is None:
                    write(state)
            except BaseException as exc:  # raised again in the training thread
                self._error = exc
            finally:
                del state
                self._slots.release()
                self._queue.task_done()

    def check(self) -> None:
        """Raise the first failed write's error (once)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def wait(self) -> None:
        self._queue.join()
        self.check()
