"""The data order of training: which sequences each optimizer step reads, and a thread that
builds the coming steps' micro-batches while the current step runs.

The order is a pure function of the step: the train stream is cut into
sequences of seq_len + 1 tokens, each epoch visits them in a seeded
permutation, and optimizer step s consumes the next `batch_tokens / seq_len`
of them. A checkpoint therefore only needs the step to know its data position,
and a run with W processes and A accumulation steps sees exactly the same
global batches as a single process with W * A accumulation steps.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch

from gpt2 import UserError
from gpt2.shards import TokenStream


class Batches:
    """Sequence indices of global batch `step`, from seeded per-epoch permutations."""

    def __init__(self, stream: TokenStream, seq_len: int, per_step: int, seed: int):
        self.stream, self.seq_len, self.per_step, self.seed = stream, seq_len, per_step, seed
        self.count = (len(stream) - 1) // seq_len
        if self.count < 1:
            raise UserError(f"the train split has {len(stream)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        self._epoch, self._perm = -1, None

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.count, generator=g)
        return self._perm

    def indices(self, step: int) -> list[int]:
        first = step * self.per_step
        return [int(self._order(i // self.count)[i % self.count]) for i in range(first, first + self.per_step)]

    def host(self, seqs: list[int], pin: bool) -> torch.Tensor:
        """Token ids (B, T + 1) of the sequences `seqs`, in page-locked memory when `pin` (fast async copies)."""
        rows = np.stack([self.stream.window(i * self.seq_len, self.seq_len + 1) for i in seqs]).astype(np.int64)
        ids = torch.from_numpy(rows)
        return ids.pin_memory() if pin else ids


class Prefetcher:
    """The micro-batches of the coming steps, built by a background thread.

    Each step ends in a host-device sync (the gradient norm is checked), so a
    batch gathered from the memmapped shards after it would leave the device
    idle; here it is ready (pinned for CUDA) before the step starts. Data order
    stays a pure function of the step: the thread only works ahead.
    """

    def __init__(self, batches: Batches, slices: list[slice], first: int, last: int, gpu: int | None,
                 depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.waited = 0.0  # seconds the training thread spent blocked in next()
        self._thread = threading.Thread(target=self._fill, args=(batches, slices, first, last, gpu), daemon=True)
        self._thread.start()

    def _fill(self, batches: Batches, slices: list[slice], first: int, last: int, gpu: int | None) -> None:
        """Batches of steps first..last-1, pinned for GPU `gpu` (an index; None: the CPU, no pinning)."""
        try:
            if gpu is not None:  # a new thread's current GPU is 0: pin under this rank's, not a context on GPU 0
                torch.cuda.set_device(gpu)
            for step in range(first, last):
                seqs = batches.indices(step)
                self._put([batches.host(seqs[part], gpu is not None) for part in slices])
        except BaseException as exc:  # raised again by next() in the training thread
            self._put(exc)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self) -> list[torch.Tensor]:
        """This process's micro-batches of the next step, (B, T + 1) each, on the host."""
        asked = time.perf_counter()
        item = self._queue.get()
        self.waited += time.perf_counter() - asked
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
