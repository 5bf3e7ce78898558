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
import subprocess
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
    exclusively (linked into place whole), naming its holder, its mtime a lease that a thread renews while
    the run lives. One left behind is taken over when its process is gone (same host), when it names an
    earlier run of this SLURM job (a requeued job runs again, on any node, after SLURM killed the first
    run), when squeue says its SLURM job ended (Snakemake's retry is a new job), or when its lease ran
    out (a dead node). The run removes it at the end only while it still names this run.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    job = (f" in slurm job {os.environ['SLURM_JOB_ID']} restart {_restarts()}" if os.environ.get("SLURM_JOB_ID")
           else "")
    holder = f"pid {os.getpid()} on {socket.gethostname()}{job} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
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
        lease = _Lease(lock, holder) if lock is not None else contextlib.nullcontext()
        try:
            with lease:
                yield
        finally:
            fh.truncate(0)
            if lock is not None and _read(lock) == holder:  # taken over meanwhile: the new holder's, kept
                lock.unlink(missing_ok=True)


NO_FLOCK = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)
# A .lock.held whose mtime is older than LEASE_S belongs to a run that is gone (its node died, or it was
# killed before it could remove the file): the live holder renews the mtime every RENEW_S.
LEASE_S, RENEW_S = 600.0, 30.0


class _Lease:
    """Renews a lock file's mtime every RENEW_S in a daemon thread until the block ends, while it names us."""

    def __init__(self, lock: Path, holder: str):
        self.lock, self.holder, self.done = lock, holder, threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True)

    def _renew(self) -> None:
        while not self.done.wait(RENEW_S):
            if _read(self.lock) != self.holder:  # a stall outlived the lease and another run took over
                print(f"warning: {self.lock} now names another run ({_read(self.lock)}); this run no longer "
                      "holds the folder: stop it", file=sys.stderr)
                return
            with contextlib.suppress(OSError):  # a network mount's hiccup: the next renewal tries again
                os.utime(self.lock)

    def __enter__(self) -> None:
        self.thread.start()

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def _refuse(folder: Path, holder: str) -> None:
    raise UserError(f"{folder} is in use by a training run ({holder or 'another process'}); wait for it to end "
                    "or stop it, or train into another folder") from None


def _hold_by_file(lock: Path, holder: str) -> Path:
    """Create `lock` exclusively with `holder` in it, or take over one whose holder is gone (_takeover_reason).

    Two starters that find the same dead holder must not both win: a takeover happens only inside the
    exclusively created `.lock.takeover`, and only while `lock` still names the holder found dead."""
    for _ in range(3):
        if _create(lock, holder):
            return lock
        held = _read(lock)
        reason = _takeover_reason(held, lock)
        if reason is None:
            _refuse(lock.parent, held)
        with _takeover_guard(lock):
            if _read(lock) != held:  # another starter took it over (or it was released) meanwhile
                continue
            print(f"{lock}: its holder ({held}) {reason}; taking it over", file=sys.stderr)
            lock.unlink(missing_ok=True)
            if _create(lock, holder):
                return lock
    _refuse(lock.parent, _read(lock))


def _create(lock: Path, holder: str) -> bool:
    """`lock` made with `holder` in it, whole: written beside it, then hard-linked into place (atomic, also on
    NFS), so no starter ever reads an empty lock; False when it exists."""
    staged = lock.with_name(f"{lock.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    staged.write_text(holder + "\n")
    try:
        os.link(staged, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: an exclusive create, written at once
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(holder + "\n")
        return True
    finally:
        staged.unlink(missing_ok=True)


def _read(lock: Path) -> str:
    try:
        return lock.read_text().strip()
    except FileNotFoundError:
        return ""


@contextlib.contextmanager
def _takeover_guard(lock: Path) -> Iterator[None]:
    """Exclusive for one starter at a time; a guard older than a minute was left by a starter that died in it."""
    guard = lock.with_name(".lock.takeover")
    with contextlib.suppress(FileNotFoundError):
        if time.time() - guard.stat().st_mtime > 60:
            guard.unlink()
    if not _create(guard, str(os.getpid())):
        _refuse(lock.parent, "another run is taking the folder over right now")
    try:
        yield
    finally:
        guard.unlink(missing_ok=True)


def _takeover_reason(held: str, lock: Path) -> str | None:
    """Why the holder named in `lock` (`pid N on HOST [in slurm job J restart R] since ...`) is gone, or None
    if it may live: a process of this host that no longer runs, an earlier run of this SLURM job, a SLURM
    job that ended, a lease run out."""
    match = re.match(r"pid (\d+) on (\S+)(?: in slurm job ([0-9_]+) restart (\d+))? since ", held)
    try:
        idle = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return "released it"
    if not match:  # not ours to read: live until its lease runs out
        return f"left no readable holder {idle:,.0f} s ago" if idle > LEASE_S else None
    pid, host, job, restarts = int(match[1]), match[2], match[3], match[4]
    if job is not None and job == os.environ.get("SLURM_JOB_ID") and int(restarts) < _restarts():
        return "was an earlier run of this SLURM job (requeued)"
    if host == socket.gethostname() and not _runs(pid):
        return "is gone"
    if job is not None and job != os.environ.get("SLURM_JOB_ID") and _slurm_job_ended(job):
        return f"ran in SLURM job {job}, which has ended"
    if idle > LEASE_S:
        return f"let its lease run out ({idle:,.0f} s without renewal, more than {LEASE_S:,.0f} s)"
    return None


def _restarts() -> int:
    """How often SLURM has requeued this job (0: its first run, or no SLURM)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def _slurm_job_ended(job: str) -> bool:
    """squeue no longer lists the job (or no longer knows its id); False where squeue cannot tell."""
    try:
        proc = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if proc.returncode != 0:
        return "invalid job id" in proc.stderr.lower()
    return proc.stdout.strip() == ""


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
