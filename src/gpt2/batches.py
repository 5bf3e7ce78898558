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
        stream.random_access()
        self._orders: dict[int, torch.Tensor] = {}  # the latest epochs' permutations (readers may straddle two)
        self._lock = threading.Lock()  # the prefetch readers share this cache

    def _order(self, epoch: int) -> torch.Tensor:
        with self._lock:
            if epoch not in self._orders:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._orders[epoch] = torch.randperm(self.count, generator=g)
                for old in sorted(self._orders)[:-2]:
                    del self._orders[old]
            return self._orders[epoch]

    def indices(self, step: int) -> list[int]:
        first = step * self.per_step
        return [int(self._order(i // self.count)[i % self.count]) for i in range(first, first + self.per_step)]

    def host(self, seqs: list[int], pin: bool) -> torch.Tensor:
        """Token ids (B, T + 1) of the sequences `seqs`, in page-locked memory when `pin` (fast async copies)."""
        rows = np.stack([self.stream.window(i * self.seq_len, self.seq_len + 1) for i in seqs]).astype(np.int64)
        ids = torch.from_numpy(rows)
        return ids.pin_memory() if pin else ids


class Prefetcher:
    """The micro-batches of the coming steps, built by `readers` background threads.

    A batch gathered from the memmapped shards after a step would leave the
    device idle; here it is ready (pinned for CUDA) before the step starts.
    Reader k builds steps first + k, first + k + readers, ... into a queue of
    its own, and `next()` takes the queues in turn, so the data order stays a
    pure function of the step whatever the number of readers (several pay on
    network file systems, where each random window waits on the network).
    """

    def __init__(self, batches: Batches, slices: list[slice], first: int, last: int, gpu: int | None,
                 depth: int = 2, readers: int = 1):
        self._queues = [queue.Queue(maxsize=depth) for _ in range(readers)]
        self._stop = threading.Event()
        self._next = 0  # how many steps next() has handed out
        self.waited = 0.0  # seconds the training thread spent blocked in next()
        self._threads = [threading.Thread(target=self._fill, daemon=True,
                                          args=(batches, slices, range(first + k, last, readers), gpu, q))
                         for k, q in enumerate(self._queues)]
        for thread in self._threads:
            thread.start()

    def _fill(self, batches: Batches, slices: list[slice], steps: range, gpu: int | None, out: queue.Queue) -> None:
        """Batches of `steps` into `out`, pinned for GPU `gpu` (an index; None: the CPU, no pinning)."""
        try:
            if gpu is not None:  # a new thread's current GPU is 0: pin under this rank's, not a context on GPU 0
                torch.cuda.set_device(gpu)
            for step in steps:
                seqs = batches.indices(step)
                self._put(out, [batches.host(seqs[part], gpu is not None) for part in slices])
        except BaseException as exc:  # raised again by next() in the training thread
            self._put(out, exc)

    def _put(self, out: queue.Queue, item) -> None:
        while not self._stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self) -> list[torch.Tensor]:
        """This process's micro-batches of the next step, (B, T + 1) each, on the host."""
        asked = time.perf_counter()
        item = self._queues[self._next % len(self._queues)].get()
        self._next += 1
        self.waited += time.perf_counter() - asked
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
