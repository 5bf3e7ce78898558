"""Checkpoint I/O: one loader (weights only, one-line errors) and one atomic saver.

A training checkpoint holds model, optimizer, scheduler and scaler state, the
step, tokens seen, RNG states and both configs; a final `model.pt` holds the
model and the configs only. Both load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import queue
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import torch

from gpt2 import UserError
from gpt2.files import atomic_path
from gpt2.model import GPT, GPTConfig


def load(path: str | Path, label: str = "") -> dict:
    """A state dict saved by this project; a missing, truncated or code-carrying file is a UserError."""
    path = Path(path)
    label = f"{label} {path}" if label else str(path)
    if not path.is_file():
        raise UserError(f"{label}: no such file; train it first (rule train)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated files, pickles with code, non-checkpoints all land here
        raise UserError(f"{label}: not a loadable checkpoint ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise UserError(f"{label}: not a gpt2 checkpoint (no model/model_config entries)")
    return state


def save(state: dict, path: str | Path) -> None:
    """torch.save through a temp file; a failed write (full disk) leaves `path` as it was."""
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except RuntimeError as exc:  # torch's zip writer reports write errors as RuntimeError
        raise UserError(f"could not write {path} ({str(exc).splitlines()[0][:80]}); is the disk full? "
                        "Earlier checkpoints are kept") from None


def load_model(path: str | Path, device: torch.device, label: str = "") -> tuple[GPT, dict]:
    """The model of a model.pt or checkpoint on `device`, and the whole saved state."""
    state = load(path, label)
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(device), state


def check_architecture(cfg: GPTConfig, expect: dict, source: Path) -> None:
    """Dims a user named (flags) must agree with the checkpoint, which is what gets used."""
    for name, value in expect.items():
        if value is not None and value != getattr(cfg, name):
            raise UserError(f"--{name} {value} does not match the checkpoint's {getattr(cfg, name)} ({source}); "
                            "drop the flag or pass the right model")


# --- a training run's folder of step_NNNNNNN.pt files ------------------------------------


def paths(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, newest first."""
    return sorted(Path(folder).glob("step_*.pt"), reverse=True)


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


def to_host(value: Any) -> Any:
    """A copy of a (nested) state dict with every tensor copied to host memory, detached from training."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: to_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_host(v) for v in value)
    return value


class Writer:
    """Checkpoint writes in a background thread, in the order they were asked for.

    The training loop pays for a copy of the state to host memory (a GPU checkpoint of GPT-2 small
    with its AdamW moments is ~1.1 GB: a fraction of a second) instead of serialising and fsyncing
    it. Each write is still atomic; `wait()` returns once all are on disk and raises the first
    write's error, if any.
    """

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def submit(self, write: Callable[[dict], Any], state: dict) -> None:
        """Run `write(copy of state)` in the background; the live `state` may change right after."""
        self._queue.put((write, to_host(state)))

    def _work(self) -> None:
        while True:
            write, state = self._queue.get()
            try:
                if self._error is None:
                    write(state)
            except BaseException as exc:  # raised again by wait() in the training thread
                self._error = exc
            finally:
                self._queue.task_done()

    def wait(self) -> None:
        self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
