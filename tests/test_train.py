"""Stage 4: schedule, data order, exact resume after a real kill -9, DDP equivalence, learning."""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, TINY_CONFIG, snakemake
from gpt2.model import GPT, GPTConfig
from gpt2.shards import TokenStream
from gpt2.checkpoint import load_model
from gpt2.device import use_bf16
from gpt2.cli import build_parser, settings_from
from gpt2.evaluate import stream_nll
from gpt2.params import Architecture, TrainParams
import gpt2.device
import gpt2.train
from gpt2.batches import Batches, Prefetcher
import gpt2.optim
from gpt2 import UserError
from gpt2.optim import SplitMuon, build_optimizer, idle_settings, lr_factor, param_groups
from gpt2.run_state import Outputs, build_state
from gpt2.train import model_config, train

TINY_ARCH = ["--layers", "2", "--heads", "2", "--dims", "64", "--seq_len", "64"]
RUN = ["--steps", "24", "--batch_tokens", "1024", "--micro_batch", "8", "--dropout", "0", "--lr", "0.003", "--warmup_ratio", "0.17",
       "--eval_every", "8", "--eval_tokens", "1024", "--log_every", "4", "--checkpoint_every", "4",
       "--keep_checkpoints", "3", "--threads", "1", "--device", "cpu"]


def _train_cmd(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gpt2", "train", "--eval_corpus", str(manifest), *_outputs(out), *TINY_ARCH, *RUN,
            *extra]


def _outputs(out: Path) -> list[str]:
    return ["--save_model_path", str(out / "model.pt"), "--save_checkpoint_path", str(out / "checkpoints")]


class Crash(Exception):
    """Raised by the on_step callback: training ends there as it would on a crash."""


def _train_until(manifest: Path, out: Path, stop_at: int, *extra: str) -> None:
    """The run of _train_cmd in this process, ended right after step `stop_at` (and its checkpoint)."""
    args = build_parser().parse_args(["train", "--shards", str(manifest), *_outputs(out), *TINY_ARCH, *RUN, *extra])
    params, arch = settings_from(TrainParams, args), settings_from(Architecture, args)

    def stop(step: int) -> None:
        if step == stop_at:
            raise Crash

    with pytest.raises(Crash):
        train(manifest, Outputs(args.save_model_path, args.save_checkpoint_path), model_config(manifest, arch, params),
              params, on_step=stop)
    assert not (out / "model.pt").exists()


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _losses(path: Path) -> list[tuple[int, float, str]]:
    return [(int(r["step"]), float(r["train_loss"]), r["eval_loss"]) for r in _rows(path)]


def _lrs_used(manifest: Path, out: Path, steps: int, schedule: str) -> list[float]:
    """The peak's multiplier at every step a Muon run of `steps` steps took, as metrics.csv logged its lr and
    muon_lr (they follow one schedule)."""
    params = TrainParams(steps=steps, schedule=schedule, seq_len=8, batch_tokens=8, micro_batch=1, log_every=1,
                         eval_every=10**6, checkpoint_every=10**6, eval_tokens=16, batch_eval=1, init_prior=False,
                         threads=1, device="cpu")
    vocab = json.loads(manifest.read_text())["vocab_size"]
    shape = GPTConfig(vocab_size=vocab, seq_len=8, layers=1, heads=1, dims=16, mlp_ratio=1, dropout=0.0)
    train(manifest, Outputs(out / "model.pt", out / "checkpoints"), shape, params)
    rows = _rows(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
    factors = [float(r["lr"]) / params.lr for r in rows]
    assert [float(r["muon_lr"]) / params.muon_lr for r in rows] == pytest.approx(factors, rel=1e-5)
    return factors


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_one_and_two_step_runs_end_at_the_floor_after_a_real_warmup_step(tiny_run, tmp_path, schedule):
    manifest = tiny_run / "results/shards/manifest.json"
    assert _lrs_used(manifest, tmp_path / "one", 1, schedule) == pytest.approx([0.1])  # the last step: end lr
    assert _lrs_used(manifest, tmp_path / "two", 2, schedule) == pytest.approx([0.5, 0.1])


def test_the_25_step_schedules_warm_up_reach_the_peak_and_end_at_the_floor(tiny_run, tmp_path):
    """make run's 25 steps: one ramp step (0.05 x 25 rounds to 1), the peak, then each schedule's decay."""
    manifest = tiny_run / "results/shards/manifest.json"
    for schedule in ("cosine", "wsd"):
        factors = _lrs_used(manifest, tmp_path / schedule, 25, schedule)
        assert factors[:2] == pytest.approx([0.5, 1.0]) and factors[-1] == pytest.approx(0.1)
        assert all(a > b for a, b in zip(factors[1:], factors[2:])) == (schedule == "cosine")
        if schedule == "wsd":  # 0.3 x 25 rounds to 8 decay steps: 9 to 16 at the peak after warmup
            assert factors[1:17] == pytest.approx([1.0] * 16)
            assert [a - b for a, b in zip(factors[16:], factors[17:])] == pytest.approx([0.9 / 8] * 8, abs=1e-5)


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_a_4000_step_schedule_warms_up_over_200_steps_and_ends_at_the_floor(tiny_run, tmp_path, schedule):
    factors = _lrs_used(tiny_run / "results/shards/manifest.json", tmp_path, 4000, schedule)
    warmup = factors[:200]
    assert all(a < b < 1 for a, b in zip(warmup, warmup[1:])) and factors[200] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(factors[200:], factors[201:]))
    if schedule == "wsd":  # 1,200 decay steps after the peak's last (step 2,800)
        assert factors[200:2800] == pytest.approx([1.0] * 2600) and factors[2800] < 1.0
    else:
        assert factors[2100] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 1900 / 3799)), rel=1e-5)


ONE_LAYER = GPTConfig(vocab_size=64, seq_len=8, layers=1, heads=2, dims=32, mlp_ratio=4, dropout=0.0)


def _muon_step(bf16: bool, steps: int = 1, momentum: float = 0.0) -> tuple[GPT, dict[str, torch.Tensor]]:
    """A 1-layer model after `steps` Muon steps on seeded random gradients, and its weights before them."""
    torch.manual_seed(0)
    model = GPT(ONE_LAYER)
    opt = build_optimizer(model, TrainParams(optimizer="muon", muon_momentum=momentum, muon_weight_decay=0.1),
                          fused=False, bf16=bf16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        model.blocks[0].attn.qkv.weight.grad[:32] *= 100  # q's gradient dwarfs k's and v's
        opt.step()
    return model, before


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp32"])
def test_muon_orthogonalises_q_k_and_v_as_three_matrices(bf16):
    """One fused orthogonalisation of q, k, v would drown k's and v's updates under q's gradient."""
    model, before = _muon_step(bf16)
    qkv = model.blocks[0].attn.qkv.weight  # (3D, D): q, k, v rows
    for block in (qkv.detach() - before["blocks.0.attn.qkv.weight"]).chunk(3):
        s = torch.linalg.svdvals(block.float()) / 0.02  # Newton-Schulz: singular values near 1, not exactly
        assert 0.3 < s.min() and s.max() < 1.7
    fc = model.blocks[0].mlp.fc.weight.detach() - before["blocks.0.mlp.fc.weight"]  # (4D, D): lr x sqrt(4)
    assert 0.3 < (torch.linalg.svdvals(fc) / 0.04).min() and (torch.linalg.svdvals(fc) / 0.04).max() < 1.7
    assert not torch.equal(model.wte.weight, before["wte.weight"])  # AdamW steps the rest


def test_muon_in_fp32_takes_torchs_bf16_step():
    """Without native bf16 the same update (Nesterov momentum, decay, lr x sqrt(rows/cols)) runs in fp32."""
    fp32, before = _muon_step(bf16=False, steps=3, momentum=0.95)
    bf16, _ = _muon_step(bf16=True, steps=3, momentum=0.95)
    for name, p in fp32.named_parameters():
        delta, reference = p.detach() - before[name], dict(bf16.named_parameters())[name].detach() - before[name]
        assert (delta - reference).norm() < 0.03 * reference.norm(), name  # bf16's rounding, no more


@pytest.mark.parametrize("native", [True, False])
def test_the_machine_decides_where_muon_orthogonalises(native, monkeypatch):
    """Emulated bf16 (AVX2) makes Newton-Schulz ~40x slower than fp32 there: build_state picks fp32."""
    monkeypatch.setattr(gpt2.device, "cpu_has_bf16", lambda: native)
    run = SimpleNamespace(params=TrainParams(optimizer="muon", init_prior=False),
                          env=SimpleNamespace(device=torch.device("cpu")), model_cfg=ONE_LAYER, bf16=False)
    assert build_state(run).optimizer.parts[0].bf16 is native


def test_onednn_capped_below_avx512_bf16_counts_as_emulated_bf16(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes bf16 matmuls emulated on any CPU: neither autocast nor Muon may use them."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    native = gpt2.device.cpu_has_bf16()  # the CPU's own answer
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert gpt2.device.cpu_has_bf16() is native
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert not gpt2.device.cpu_has_bf16() and not use_bf16("auto", torch.device("cpu"))


def test_every_sequence_is_seen_once_per_epoch(tiny_run):
    stream = TokenStream(tiny_run / "results/shards/manifest.json", "train")
    batches = Batches(stream, seq_len=128, per_step=64, seed=3)
    steps = batches.count // 64
    seen = [i for s in range(steps) for i in batches.indices(s)]
    assert len(set(seen)) == len(seen) == steps * 64
    assert batches.indices(5) == Batches(stream, 128, 64, 3).indices(5)  # a pure function of the step
    assert batches.indices(5) != Batches(stream, 128, 64, 4).indices(5)


def test_prefetched_micro_batches_are_the_steps_sequences(tiny_run):
    stream = TokenStream(tiny_run / "results/shards/manifest.json", "train")
    batches = Batches(stream, 64, 8, 3)
    slices = [slice(4, 6), slice(0, 2)]  # rank 2 of 4, two micro-batches of 2
    feed = Prefetcher(batches, slices, 5, 9, None)
    try:
        for step in range(5, 9):
            expected = [batches.host(batches.indices(step)[part], pin=False) for part in slices]
            assert all(torch.equal(a, b) for a, b in zip(feed.next(), expected))
    finally:
        feed.close()


def test_several_readers_hand_out_the_steps_in_order(tiny_run):
    stream = TokenStream(tiny_run / "results/shards/manifest.json", "train")
    batches = Batches(stream, 64, 8, 3)
    feed = Prefetcher(batches, [slice(0, 8)], 3, 3 + 2 * batches.count // 8, None, readers=3)  # two epochs
    try:
        for step in range(3, 3 + 2 * batches.count // 8):
            assert torch.equal(feed.next()[0], batches.host(Batches(stream, 64, 8, 3).indices(step), pin=False))
    finally:
        feed.close()


def test_training_reads_its_shards_with_random_access_advice(tiny_run):
    """MADV_RANDOM shows as the mapping's "rr" flag in /proc/self/smaps: no read-ahead around each window."""
    stream = TokenStream(tiny_run / "results/shards/manifest.json", "train")
    Batches(stream, 64, 8, 3)
    shard = str(tiny_run / "results/shards" / stream.manifest["splits"]["train"]["shards"][0]["file"])
    smaps = Path("/proc/self/smaps").read_text().split("\n")
    at = next(i for i, line in enumerate(smaps) if line.endswith(shard))
    flags = next(line for line in smaps[at:] if line.startswith("VmFlags:")).split()
    assert "rr" in flags, flags


def test_a_failing_prefetch_thread_raises_in_the_training_thread(tiny_run):
    batches = Batches(TokenStream(tiny_run / "results/shards/manifest.json", "train"), 64, 8, 3)
    batches.host = lambda seqs, pin: 1 / 0
    feed = Prefetcher(batches, [slice(0, 8)], 0, 100, None)
    with pytest.raises(ZeroDivisionError):
        feed.next()
    feed.close()
    stuck = Prefetcher(Batches(batches.stream, 64, 8, 3), [slice(0, 8)], 0, 100, None, depth=1)
    time.sleep(0.2)  # the thread now blocks on a full queue; close() must still end it
    stuck.close()
    assert not any(thread.is_alive() for thread in stuck._threads)


def test_on_a_gpu_the_prefetch_thread_pins_under_the_training_gpu(tiny_run, monkeypatch):
    """CUDA is not here: the thread's CUDA calls are checked as torch would check them, then recorded."""
    from torch.cuda._utils import _get_device_index

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", _get_device_index(d))))
    batches = Batches(TokenStream(tiny_run / "results/shards/manifest.json", "train"), 64, 8, 3)
    monkeypatch.setattr(batches, "host", lambda seqs, pin: calls.append(("host", pin)) or torch.zeros(1))
    feed = Prefetcher(batches, [slice(0, 8)], 0, 2, gpu=1)
    feed.next(), feed.next()
    feed.close()
    assert calls == [("set_device", 1), ("host", True), ("host", True)]


def test_a_background_checkpoint_holds_the_state_it_was_asked_for(tmp_path):
    import threading

    from gpt2 import UserError, checkpoint

    weights, may_write = torch.zeros(4), threading.Event()

    def write(state):
        may_write.wait()
        checkpoint.save(state, tmp_path / "c.pt")

    writer = checkpoint.Writer()
    writer.submit(write, {"model": {"w": weights}, "model_config": {}, "step": 1})
    weights += 1  # training goes on before the write starts
    may_write.set()
    writer.wait()
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["model"]["w"], torch.zeros(4))

    def full_disk(state):
        raise UserError("could not write c.pt; is the disk full?")

    writer.submit(full_disk, {})
    with pytest.raises(UserError, match="disk full"):
        writer.wait()
    writer.wait()  # reported once


def test_pending_checkpoint_copies_are_bounded_and_the_loop_waits(tmp_path):
    import threading

    from gpt2 import checkpoint

    release, written = threading.Event(), []
    writer = checkpoint.Writer(max_pending=1)
    writer.submit(lambda state: (release.wait(), written.append(state["step"])), {"step": 1})
    second = threading.Thread(target=writer.submit, args=(lambda state: written.append(state["step"]), {"step": 2}))
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive() and written == []  # the second copy waits for the first write
    release.set()
    second.join(timeout=10)
    writer.wait()
    assert written == [1, 2]


@pytest.mark.reliability
def test_a_failed_checkpoint_write_stops_the_loop_at_the_next_step(tiny_run, tmp_path, monkeypatch):
    from gpt2 import UserError, checkpoint

    def full_disk(folder, state, keep):
        if state["step"] == 8:
            raise UserError("could not write step_0000008.pt; is the disk full?")
        return save_rotating(folder, state, keep)

    save_rotating, steps = checkpoint.save_rotating, []
    monkeypatch.setattr(checkpoint, "save_rotating", full_disk)
    # the failing write (in the background) is given time to fail before step 9 starts
    on_step = lambda step: (steps.append(step), time.sleep(0.5 if step == 8 else 0))  # noqa: E731
    manifest = tiny_run / "results/shards/manifest.json"
    args = build_parser().parse_args(["train", "--shards", str(manifest), *_outputs(tmp_path), *TINY_ARCH, *RUN])
    params, arch = settings_from(TrainParams, args), settings_from(Architecture, args)
    with pytest.raises(UserError, match="is the disk full"):
        train(manifest, Outputs(args.save_model_path, args.save_checkpoint_path), model_config(manifest, arch, params),
              params, on_step=on_step)
    assert steps[-1] == 8 and [p.name for p in checkpoint.paths(tmp_path / "checkpoints")] == ["step_0000004.pt"]


@pytest.mark.reliability
def test_a_second_run_into_a_held_folder_is_refused_and_stale_temps_go(tiny_run, tmp_path):
    from gpt2 import checkpoint

    manifest = tiny_run / "results/shards/manifest.json"
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = [folder / ".step_0000004.pt.k2j4h1.tmp", tmp_path / ".model.pt.x8y7z6.tmp"]
    theirs = [folder / ".notes.tmp", folder / "step_4.pt.bak"]
    with checkpoint.holding(folder):
        for path in stale + theirs:
            path.write_bytes(b"partial")
        proc = subprocess.run(_train_cmd(manifest, tmp_path), env=_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and all(p.exists() for p in stale)
    assert proc.stderr.strip().splitlines()[-1] == (f"error: {folder} is in use by a training run (pid {os.getpid()} "
                                                    f"on {socket.gethostname()} since " +
                                                    proc.stderr.split(" since ")[1].split(")")[0] +
                                                    "); wait for it to end or stop it, or train into another folder")
    proc = subprocess.run(_train_cmd(manifest, tmp_path), env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not any(p.exists() for p in stale) and all(p.exists() for p in theirs)
    assert f"removing {stale[0]}, left by a run that was stopped while writing it" in proc.stderr


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK])
def test_without_flock_the_folder_is_held_by_an_exclusive_file(tmp_path, monkeypatch, capsys, code):
    """Lustre and some NFS mounts answer flock with ENOSYS/EOPNOTSUPP/ENOLCK: the run still holds its folder."""
    from gpt2 import UserError, checkpoint

    def no_flock(fh, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoint.fcntl, "flock", no_flock)
    folder = tmp_path / "checkpoints"
    with checkpoint.holding(folder):
        assert "has no flock" in capsys.readouterr().err
        with pytest.raises(UserError, match=f"in use by a training run \\(pid {os.getpid()} on "):
            with checkpoint.holding(folder):
                pass
    assert not (folder / ".lock.held").exists()
    # A holder that was killed leaves the file; a process of this host that is gone no longer holds it.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / ".lock.held").write_text(f"pid {dead.stdout.strip()} on {socket.gethostname()} since then\n")
    with checkpoint.holding(folder):
        assert "is gone; taking it over" in capsys.readouterr().err
    (folder / ".lock.held").write_text("pid 1 on another-host since then\n")  # another host's, its lease live
    with pytest.raises(UserError, match="another-host"):
        with checkpoint.holding(folder):
            pass
    expired = time.time() - checkpoint.LEASE_S - 5  # a dead node renews nothing
    os.utime(folder / ".lock.held", (expired, expired))
    with checkpoint.holding(folder):
        assert "let its lease run out" in capsys.readouterr().err
    (folder / ".lock.held").write_text("pid 1 on another-host in slurm job 77 restart 0 since then\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue: whether job 77 still runs is unknown
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    with pytest.raises(UserError, match="another-host in slurm job 77"):  # another job's, perhaps live
        with checkpoint.holding(folder):
            pass
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the same job on another node, not requeued: a step beside us
    with pytest.raises(UserError, match="another-host in slurm job 77"):
        with checkpoint.holding(folder):
            pass
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the same job, requeued
    with checkpoint.holding(folder):
        assert "(requeued); taking it over" in capsys.readouterr().err
        held = (folder / ".lock.held").read_text()
        assert f"pid {os.getpid()} on {socket.gethostname()} in slurm job 77 restart 1 since" in held
        (folder / ".lock.held").write_text("pid 1 on another-host since then\n")  # taken over while we stalled
    assert (folder / ".lock.held").read_text() == "pid 1 on another-host since then\n"  # theirs: kept
    (folder / ".lock.held").write_text("pid 1 on another-host in slurm job 76 restart 0 since then\n")
    (tmp_path / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    (tmp_path / "squeue").chmod(0o755)  # Snakemake's retry is a new job; squeue has forgotten job 76
    with checkpoint.holding(folder):
        assert "ran in SLURM job 76, which has ended; taking it over" in capsys.readouterr().err


@pytest.mark.reliability
def test_two_starters_never_both_take_over_a_dead_holders_lock(tmp_path):
    """Eight processes find the same dead holder's .lock.held at once: one of them holds the folder."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / ".lock.held").write_text(f"pid {dead.stdout.strip()} on {socket.gethostname()} since then\n")
    go = tmp_path / "go"  # the starters wait for it, so that they race for real
    hold = ("import os, sys, time; from gpt2 import UserError, checkpoint\n"
            "while not os.path.exists(sys.argv[2]): pass\n"
            "try:\n    with checkpoint.holding(sys.argv[1]):\n        print('held'); sys.stdout.flush(); time.sleep(3)\n"
            "except UserError as exc:\n    print('refused')\n")
    env = dict(_env(), PYTHONPATH=f"{ROOT / 'tests/noflock'}:{ROOT / 'src'}")
    procs = [subprocess.Popen([sys.executable, "-c", hold, str(folder), str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(8)]
    time.sleep(8)  # all have imported gpt2 (and torch) and spin on `go`
    go.touch()
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["held"] + ["refused"] * 7


def test_mfu_is_per_device():
    """Two processes train twice the tokens per second on two devices: each device's MFU is one process's."""
    from gpt2.distributed import Dist
    from gpt2.train import mfu

    run = SimpleNamespace(peak_flops=1e12, env=Dist(rank=0, world=1))
    state = SimpleNamespace(model=GPT(GPTConfig(512, 64, 2, 2, 64, 4, 0.0)))
    one = mfu(run, state, 1000.0)
    assert one == pytest.approx(1000.0 * state.model.flops_per_token() / 1e12)
    run.env = Dist(rank=0, world=2)
    assert mfu(run, state, 2000.0) == pytest.approx(one)


def test_checkpoints_rotate_by_step_number_not_by_name(tmp_path):
    from gpt2 import checkpoint

    for name in ("step_9999999.pt", "step_10000000.pt", "step_0000005.pt", "step_x.pt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in checkpoint.paths(tmp_path)] == ["step_10000000.pt", "step_9999999.pt", "step_0000005.pt"]


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = GPT(GPTConfig(vocab_size=64, seq_len=8, layers=1, heads=1, dims=8, mlp_ratio=4, dropout=0.0))
    decay, plain = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {
        "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"}
    assert plain["weight_decay"] == 0.0 and "wte.weight" in {names[id(p)] for p in plain["params"]}


def _muon_parts(net: torch.nn.Module, model: GPT) -> tuple[list[str], list[str]]:
    """The names (in `model`) of the parameters Muon and AdamW get when the optimizer is built on `net`."""
    muon, adamw = build_optimizer(net, TrainParams(optimizer="muon"), fused=False).parts
    names = {id(p): n for n, p in model.named_parameters()}
    return ([names[id(p)] for g in muon.param_groups for p in g["params"]],
            [names[id(p)] for g in adamw.param_groups for p in g["params"]])


def test_muon_takes_the_same_weights_of_a_compiled_and_a_ddp_wrapped_model(tmp_path):
    """Their parameter names gain `_orig_mod.` / `module.`: the split goes by module, not by name."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = GPT(ONE_LAYER)
    bare = _muon_parts(model, model)
    assert "wte.weight" in bare[1] and bare[0][0] == "blocks.0.attn.qkv.weight" and len(bare[0]) == 4
    compiled = torch.compile(model)
    assert next(n for n, _ in compiled.named_parameters()).startswith("_orig_mod.")
    assert _muon_parts(compiled, model) == bare
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model)
        assert next(n for n, _ in wrapped.named_parameters()).startswith("module.")
        assert _muon_parts(wrapped, model) == bare
    finally:
        dist.destroy_process_group()


def test_muon_in_fp32_honours_adjust_lr_fn_as_torch_does():
    """match_rms_adamw scales a (4D, D) matrix's step by 0.2 sqrt(4D) instead of sqrt(4): both paths agree."""
    steps = {}
    for bf16 in (True, False):
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(128, 32))
        start = weight.detach().clone()
        weight.grad = torch.randn_like(weight)
        SplitMuon([{"params": [weight], "split": 1}], lr=0.01, weight_decay=0.0, adjust_lr_fn="match_rms_adamw",
                  bf16=bf16).step()
        steps[bf16] = weight.detach() - start
    assert (steps[False] - steps[True]).norm() < 0.03 * steps[True].norm()
    rms = steps[False].square().mean().sqrt() / 0.01  # an orthogonalised (128, 32) update has RMS ~ 1/sqrt(128)
    assert 0.6 * 0.2 < rms < 1.4 * 0.2


def test_a_setting_the_optimizer_ignores_is_named_in_a_warning():
    assert idle_settings(TrainParams()) == [] and idle_settings(TrainParams(optimizer="adamw")) == []
    [line] = idle_settings(TrainParams(optimizer="muon", weight_decay=0.05))
    assert line.startswith("warning: train.weight_decay = 0.05 has no effect with train.optimizer muon")
    [line] = idle_settings(TrainParams(optimizer="adamw", muon_lr=0.05))
    assert "train.muon_lr = 0.05 has no effect with train.optimizer adamw" in line
    [line] = idle_settings(TrainParams(schedule="cosine", decay_ratio=0.5))
    assert "train.decay_ratio = 0.5 has no effect with train.schedule cosine" in line


def test_a_torch_without_muon_or_with_another_init_group_is_refused_in_one_line(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(UserError, match=r"has no torch.optim.Muon: this project needs torch >= 2\.9"):
        gpt2.optim._check_torch()

    class Changed(torch.optim.Optimizer):
        def _init_group(self, group, params, grads, bufs, extra):
            pass

    monkeypatch.setattr(torch.optim, "Muon", Changed, raising=False)
    with pytest.raises(UserError, match="changed Muon's private _init_group"):
        gpt2.optim._check_torch()


def test_training_beats_the_unigram_baseline(tiny_run):
    report = json.loads((tiny_run / "results/eval_tiny.json").read_text())
    assert report["train_steps"] == TINY_CONFIG["train"]["steps"]
    assert report["perplexity"] < 0.8 * report["unigram_perplexity"]
    rows = _rows(tiny_run / "results/train/tiny/metrics.csv")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) - 0.5  # from the unigram start (init_prior)
    assert [c for c in rows[0]] == ["step", "tokens", "train_loss", "eval_loss", "lr", "muon_lr", "tokens_per_second",
                                    "grad_norm", "mfu", "data_wait", "optimizer", "schedule"]
    assert {(r["optimizer"], r["schedule"]) for r in rows} == {("muon", "wsd")}  # the defaults
    assert all(0 < float(r["mfu"]) < 1 and 0 <= float(r["data_wait"]) < 1 for r in rows)
    log = (tiny_run / "results/logs/train/tiny.log").read_text()
    assert "train: 100%" in log  # tqdm progress in the log
    loop = re.search(r"loop: ([\d,]+) tokens/s, MFU ([\d.]+) %, waiting for batches ([\d.]+) % of the time, "
                     r"steps 2-(\d+)", log)
    assert loop and int(loop[4]) == TINY_CONFIG["train"]["steps"] and float(loop[3]) < 100


def test_periodic_evaluation_reads_the_validation_split(tiny_run):
    """The test split is read by evaluate alone; training's held-out loss comes from the valid split."""
    manifest = tiny_run / "results/shards/manifest.json"
    last = _rows(tiny_run / "results/train/tiny/metrics.csv")[-1]
    model, _ = load_model(tiny_run / "results/train/tiny/model.pt", torch.device("cpu"))
    eval_tokens = TINY_CONFIG["train"]["eval_tokens"]
    bf16 = use_bf16("auto", torch.device("cpu"))  # as training evaluated (native bf16 CPUs autocast)
    scores = {split: stream_nll(model, TokenStream(manifest, split), 128, 16, torch.device("cpu"), limit=eval_tokens,
                                bf16=bf16)
              for split in ("valid", "test")}
    valid, test = (nll / count for nll, count in scores.values())
    assert float(last["eval_loss"]) == pytest.approx(valid, rel=1e-5) and abs(valid - test) > 1e-3


ADAMW_COSINE = ("--optimizer", "adamw", "--schedule", "cosine")  # GPT-2's recipe
MUON_WSD = ("--optimizer", "muon", "--schedule", "wsd")  # the default


@pytest.mark.reliability
@pytest.mark.parametrize("recipe", [ADAMW_COSINE, MUON_WSD], ids=["adamw", "muon"])
def test_kill_9_then_resume_equals_an_uninterrupted_run(tiny_run, tmp_path, recipe):
    manifest = tiny_run / "results/shards/manifest.json"
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    dropout = ("--dropout", "0.1", *recipe)  # resume must restore the RNG that draws dropout masks
    subprocess.run(_train_cmd(manifest, straight, *dropout), check=True, env=_env(), capture_output=True)
    proc = subprocess.Popen(_train_cmd(manifest, crashed, *dropout), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((crashed / "checkpoints").glob("step_0000012.pt")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (crashed / "model.pt").exists()
    resumed = subprocess.run(_train_cmd(manifest, crashed, *dropout), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert _losses(crashed / "metrics.csv") == _losses(straight / "metrics.csv")
    a = torch.load(straight / "model.pt", weights_only=True)["model"]
    b = torch.load(crashed / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _on_host(host: str, cmd: list[str]) -> list[str]:
    """`cmd` in a UTS namespace of its own whose hostname is `host`: a node of a cluster, on this machine."""
    return ["unshare", "--uts", "sh", "-c", f'hostname "$0" && exec "$@"', host, *cmd]


def _wait_for(path: Path, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)


@pytest.mark.reliability
@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare")
def test_sigterm_then_a_requeue_on_other_nodes_without_flock_resumes_the_run(tiny_run, tmp_path):
    """A SLURM time limit sends SIGTERM: the run checkpoints and releases the folder. A requeued job that is
    killed outright (SIGKILL) leaves its .lock.held; the same job id on a third node takes it over."""
    manifest = tiny_run / "results/shards/manifest.json"
    straight, requeued = tmp_path / "straight", tmp_path / "requeued"
    subprocess.run(_train_cmd(manifest, straight), check=True, env=_env(), capture_output=True)
    env = dict(_env(), PYTHONPATH=f"{ROOT / 'tests/noflock'}:{ROOT / 'src'}", SLURM_JOB_ID="4242",
               SLURM_RESTART_COUNT="0")
    held = requeued / "checkpoints/.lock.held"

    proc = subprocess.Popen(_on_host("node1", _train_cmd(manifest, requeued)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(requeued / "checkpoints/step_0000008.pt")
    assert "pid" in held.read_text() and "on node1 in slurm job 4242 restart 0 since" in held.read_text()
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    stopped = int(re.search(r"^error: stopped by SIGTERM after step (\d+) of 24; its checkpoint is in ",
                            stderr.strip().splitlines()[-1])[1])
    assert proc.returncode == 2 and "has no flock" in stderr and stopped < 24
    assert (requeued / f"checkpoints/step_{stopped:07d}.pt").exists() and not held.exists()
    assert int(_rows(requeued / "checkpoints/metrics.csv")[-1]["step"]) == stopped  # a row for the stop too

    env["SLURM_RESTART_COUNT"] = "1"  # SLURM requeued the job
    proc = subprocess.Popen(_on_host("node2", _train_cmd(manifest, requeued)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for(requeued / "checkpoints/step_0000020.pt")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "on node2 in slurm job 4242 restart 1" in held.read_text()  # left behind, another node's
    env["SLURM_RESTART_COUNT"] = "2"
    resumed = subprocess.run(_on_host("node3", _train_cmd(manifest, requeued)), env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "was an earlier run of this SLURM job (requeued); taking it over" in resumed.stderr
    assert not held.exists()
    a = torch.load(straight / "model.pt", weights_only=True)["model"]
    b = torch.load(requeued / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the weights of an uninterrupted run
    evals = lambda path: [(r["step"], r["eval_loss"]) for r in _rows(path) if r["eval_loss"]]
    assert evals(requeued / "metrics.csv") == evals(straight / "metrics.csv")


@pytest.mark.reliability
def test_resume_refuses_checkpoints_of_another_run(tiny_run, tmp_path):
    manifest = tiny_run / "results/shards/manifest.json"
    _train_until(manifest, tmp_path, 4)
    proc = subprocess.run(_train_cmd(manifest, tmp_path, "--lr", "0.01"), env=_env(), capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: checkpoints in") and "other lr" in proc.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun_commands(layout: str, manifest: Path, out: Path, *extra: str) -> list[list[str]]:
    """Two gloo processes: one `--standalone` torchrun, or two torchrun "nodes" (one process each) that meet
    at a c10d rendezvous on 127.0.0.1, as `srun ... torchrun --nnodes 2` starts them on a SLURM allocation."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    train = ["-m", "gpt2", "train", "--eval_corpus", str(manifest), *_outputs(out), *TINY_ARCH, *RUN, "--amp", "off",
             *extra]
    if layout == "one node":
        return [[torchrun, "--standalone", "--nproc_per_node", "2", *train]]
    rendezvous = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_id", "test",
                  "--rdzv_endpoint", f"127.0.0.1:{_free_port()}"]
    return [[torchrun, *rendezvous, *train] for _node in range(2)]


@pytest.mark.parametrize(("layout", "recipe"), [("one node", ADAMW_COSINE), ("two nodes", MUON_WSD)],
                         ids=["one node, adamw", "two nodes, muon"])
def test_two_gloo_processes_reproduce_the_single_process_curve(tiny_run, tmp_path, layout, recipe):
    manifest = tiny_run / "results/shards/manifest.json"
    single = tmp_path / "single"
    subprocess.run(_train_cmd(manifest, single, "--amp", "off", *recipe), check=True, env=_env(), capture_output=True)
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for cmd in _torchrun_commands(layout, manifest, tmp_path / "ddp", *recipe)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    for (s1, l1, e1), (s2, l2, e2) in zip(_losses(single / "metrics.csv"), _losses(tmp_path / "ddp/metrics.csv"),
                                          strict=True):
        assert s1 == s2 and math.isclose(l1, l2, rel_tol=1e-4)
        assert (e1 == "") == (e2 == "") and (not e1 or math.isclose(float(e1), float(e2), rel_tol=1e-4))


def test_tensorboard_events_hold_the_losses_of_metrics_csv(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tiny_run / "results/train/tiny/tensorboard"))
    board.Reload()
    rows = _rows(tiny_run / "results/train/tiny/metrics.csv")
    for tag, column in (("loss/train", "train_loss"), ("loss/valid", "eval_loss"), ("mfu", "mfu")):
        events = [(e.step, e.value) for e in board.Scalars(tag)]
        expected = [(int(r["step"]), float(r[column])) for r in rows if r[column]]
        assert [s for s, _ in events] == [s for s, _ in expected], tag
        assert [v for _, v in events] == pytest.approx([v for _, v in expected], rel=1e-6), tag
    assert {"lr", "grad_norm", "tokens_per_s"} <= set(board.Tags()["scalars"])


def test_best_pt_keeps_the_lowest_validation_loss(tiny_run, tmp_path, monkeypatch, capsys):
    """Weights spoiled after step 16: the step-24 validation loss is the worst, best.pt keeps an earlier one."""
    manifest = tiny_run / "results/shards/manifest.json"
    args = build_parser().parse_args(["train", "--shards", str(manifest), *_outputs(tmp_path), *TINY_ARCH, *RUN,
                                      "--max_epochs", "0.01"])
    params, arch = settings_from(TrainParams, args), settings_from(Architecture, args)
    states = []
    monkeypatch.setattr(gpt2.train, "build_state", lambda run, real=gpt2.train.build_state: states.append(real(run))
                        or states[-1])

    def spoil(step: int) -> None:
        if step == 16:
            with torch.no_grad():
                for p in states[0].model.parameters():
                    p.add_(torch.randn_like(p))

    train(manifest, Outputs(tmp_path / "model.pt", tmp_path / "checkpoints"), model_config(manifest, arch, params),
          params, on_step=spoil)
    evals = {int(r["step"]): float(r["eval_loss"]) for r in _rows(tmp_path / "metrics.csv") if r["eval_loss"]}
    lowest = min(evals, key=evals.get)
    assert list(evals) == [8, 16, 24] and lowest < 24
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert (best["step"], best["selected"]) == (lowest, "best") and best["valid_loss"] == pytest.approx(evals[lowest])
    assert torch.load(tmp_path / "model.pt", weights_only=True)["step"] == 24
    log = capsys.readouterr().err
    assert "24 steps x 1,024 tokens = 24,576 tokens:" in log and "tokens per parameter" in log
    assert "warning: the run reads the train split" in log and "train.max_epochs = 0.01" in log


def test_raising_steps_extends_a_finished_run(tiny_run, tmp_path):
    """20 -> 40 steps: only train and evaluate rerun, from the step-20 state, with a warm restart."""
    for sub in ("resources", "results/expanda", "results/corpus", "results/shards"):
        shutil.copytree(tiny_run / sub, tmp_path / sub)
    config = {"train": {**TINY_CONFIG["train"], "steps": 20, "eval_every": 10, "checkpoint_every": 10,
                        "warmup_ratio": 0.25}}
    proc = snakemake(tmp_path, "results/eval_tiny.json", config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = _rows(tmp_path / "results/train/tiny/metrics.csv")
    config["train"]["steps"] = 40
    proc = snakemake(tmp_path, "results/eval_tiny.json", config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(re.findall(r"^(?:local)?rule (\w+):", proc.stdout + proc.stderr, flags=re.M)) == ["evaluate",
                                                                                                    "train"]
    rows = _rows(tmp_path / "results/train/tiny/metrics.csv")
    assert rows[:len(first)] == first and [int(r["step"]) for r in rows[len(first):]] == [30, 40]
    assert "extending the finished 20-step run to 40 steps" in (tmp_path / "results/logs/train/tiny.log").read_text()
    params = TrainParams(**config["train"])
    for row in rows[len(first):]:  # the lr of the row's last step: warmup from min_lr, then the schedule
        assert float(row["lr"]) == pytest.approx(params.lr * lr_factor(int(row["step"]) - 1, params, 20), rel=1e-5)
    # the added 20 steps: 5 warmup steps from min_lr (the first at 0.1 + 0.9 / 6), the peak at step 25, the floor at 39
    assert lr_factor(20, params, 20) == pytest.approx(0.1 + 0.9 / 6) and lr_factor(25, params, 20) == 1.0
    assert lr_factor(39, params, 20) == pytest.approx(0.1)
    report = json.loads((tmp_path / "results/eval_tiny.json").read_text())
    assert (report["train_steps"], report["selected"]) == (40, "final")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "results/train/tiny/tensorboard"))
    board.Reload()
    assert [e.step for e in board.Scalars("loss/train")] == [int(r["step"]) for r in rows]
