"""Faults and bad input across stages: crashes lose no finished work, every bad input is one clear line.

Stage-specific cases live in the stage test files, also marked `reliability`;
`pytest -m reliability` runs them all (docs/reliability.md lists them).
"""

from __future__ import annotations

import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import gpt2
from test_train import _env, _losses, _train_cmd, _train_until

pytestmark = pytest.mark.reliability


def _limited(max_bytes: int):
    """preexec_fn: files may not grow past `max_bytes` (EFBIG, as on a full disk), without SIGXFSZ."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return limit


def _last_line(proc) -> str:
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_random_points_then_resume_matches(tiny_run, tmp_path, seed):
    manifest = tiny_run / "results/shards/manifest.json"
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(manifest, straight), check=True, env=_env(), capture_output=True)
    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(_train_cmd(manifest, crashed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((crashed / "checkpoints").glob("step_*.pt")) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0, 1.5))  # somewhere in a later step or checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(_train_cmd(manifest, crashed), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _losses(crashed / "metrics.csv") == _losses(straight / "metrics.csv")
    assert not list((crashed / "checkpoints").glob(".*.tmp"))


def test_a_truncated_newest_checkpoint_is_skipped(tiny_run, tmp_path):
    manifest = tiny_run / "results/shards/manifest.json"
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    subprocess.run(_train_cmd(manifest, straight), check=True, env=_env(), capture_output=True)
    _train_until(manifest, broken, 12)
    newest = broken / "checkpoints/step_0000012.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # as a crash mid-write would
    proc = subprocess.run(_train_cmd(manifest, broken), env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"skipping unreadable checkpoint {newest}" in proc.stderr and "(step 8)" in proc.stderr
    assert _losses(broken / "metrics.csv") == _losses(straight / "metrics.csv")


def test_non_finite_loss_stops_keeps_the_last_good_checkpoint(tiny_run, tmp_path):
    manifest = tiny_run / "results/shards/manifest.json"
    proc = subprocess.run(_train_cmd(manifest, tmp_path, "--lr", "1e6", "--warmup_ratio", "0.01", "--save_steps", "1",
                                     "--grad_clip", "1e30", "--amp", "off"),
                          env=_env(), capture_output=True, text=True)
    assert proc.returncode == 2
    line = _last_line(proc)
    assert line.startswith("error: non-finite loss") and " in steps " in line and "checkpoint" in line
    first, last = map(int, line.split(" in steps ")[1].split(";")[0].split("-"))  # where the damage may be
    newest = max((tmp_path / "checkpoints").glob("step_*.pt"))
    assert first - 1 <= int(newest.stem.split("_")[1]) < last
    weights = torch.load(newest, weights_only=True)["model"]  # a good one
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (tmp_path / "model.pt").exists()


def test_kill_9_of_snakemake_then_rerun_finishes(tmp_path):
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(Path(__file__).parents[1] / "Snakefile"),
           "--directory", str(tmp_path), "--cores", "2", "results/eval_tiny.json"]
    (tmp_path / "c.yaml").write_text(
        "train: {steps: 150, batch_tokens: 4096, micro_batch: 32, lr: 0.003, checkpoint_every: 20, eval_every: 50}\n")
    cmd += ["--configfile", str(tmp_path / "c.yaml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list((tmp_path / "results/train/tiny/checkpoints").glob("step_*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its running job, as a power cut would
    proc.wait()
    assert not (tmp_path / "results/eval_tiny.json").exists()
    # A killed Snakemake leaves its lock; --unlock (as its message says) then the same command.
    subprocess.run([*cmd, "--unlock"], check=True, capture_output=True)
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in (tmp_path / "results/logs/train/tiny.log").read_text()
    assert (tmp_path / "results/eval_tiny.json").exists()


def test_full_disk_while_sharding_leaves_no_output(tiny_run, tmp_path):
    corpus = tiny_run / "results/corpus"
    proc = subprocess.run([sys.executable, "-m", "gpt2", "make-shards", "--vocab_path", str(corpus / "vocab.txt"),
                           "--train_corpus", str(corpus / "corpus.train.txt"), "--valid_corpus",
                           str(corpus / "corpus.valid.txt"), "--test_corpus",
                           str(corpus / "corpus.test.txt"), "--out", str(tmp_path / "shards")],
                          env=_env(), capture_output=True, text=True, preexec_fn=_limited(100_000))
    assert proc.returncode == 2 and _last_line(proc).startswith("error: no space left"), proc.stderr[-1500:]
    assert not (tmp_path / "shards/manifest.json").exists() and not (tmp_path / "shards/train").exists()


def test_full_disk_while_checkpointing_keeps_what_was_written(tiny_run, tmp_path):
    manifest = tiny_run / "results/shards/manifest.json"
    proc = subprocess.run(_train_cmd(manifest, tmp_path), env=_env(), capture_output=True, text=True,
                          preexec_fn=_limited(1_000_000))  # the metrics fit, a checkpoint does not
    assert proc.returncode == 2
    assert "could not write" in _last_line(proc) and "is the disk full?" in _last_line(proc)
    assert not list((tmp_path / "checkpoints").glob("*.pt")) and not list((tmp_path / "checkpoints").glob(".*tmp"))
    assert not (tmp_path / "model.pt").exists()


def test_shards_of_another_vocab_are_refused(tiny_run, tmp_path):
    import shutil

    shutil.copytree(tiny_run / "results/corpus", tmp_path / "results/corpus")
    assert gpt2("make-shards", "--vocab_path", "results/corpus/vocab.txt", "--train_corpus",
                "results/corpus/corpus.train.txt", "--valid_corpus", "results/corpus/corpus.valid.txt",
                "--test_corpus", "results/corpus/corpus.test.txt", "--out", "results/shards",
                cwd=tmp_path).returncode == 0
    vocab = tmp_path / "results/corpus/vocab.txt"
    vocab.write_text(vocab.read_text().replace("\nthe\n", "\nthe2\n"))
    proc = gpt2("evaluate", "--model_path", str(tiny_run / "results/train/tiny/model.pt"), "--eval_corpus",
                "results/shards/manifest.json", cwd=tmp_path)
    assert proc.returncode == 2 and "were made with another" in _last_line(proc)
    assert "corpus/vocab.txt (sha256 differs)" in _last_line(proc)


COMMANDS = {  # command -> (required flags with valid values, a flag that takes a number)
    "fetch-dump": (["--out", "x.xml.bz2"], "--retries"),
    "patch-expanda": (["--out", "x", "--patches", "{any}"], None),
    "make-shards": (["--vocab_path", "{any}", "--train_corpus", "{any}", "--valid_corpus", "{any}", "--test_corpus",
                     "{any}", "--out", "x"],
                    "--shard_tokens"),
    "train": (["--shards", "{any}"], "--total_steps"),
    "evaluate": (["--model_path", "{any}", "--eval_corpus", "{any}"], "--batch_eval"),
    "generate": (["--model_path", "{any}", "--vocab_path", "{any}"], "--max_tokens"),
    "visualize": (["--model_path", "{any}"], None),
    "export": (["--model_path", "{any}", "--vocab_path", "{any}", "--out", "x"], None),
    "plot-training": (["--metrics", "{any}", "--loss", "a.png", "--lr", "b.png", "--speed", "c.png"], None),
    "samples": (["--model_path", "{any}", "--vocab_path", "{any}", "--output", "x"], "--sample_tokens"),
    "table": (["evaluation", "--inputs", "{any}", "--csv", "a", "--html", "b"], None),
    "screenshot": (["--out", "x.png"], None),
    "write-config": (["--root", "{any}"], None),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_bad_flags_clearly(command, tmp_path, sample_dump):
    required, number = COMMANDS[command]
    values = {"any": str(tmp_path), "dump": str(sample_dump)}
    required = [v.format(**values) for v in required]
    flags = [i for i, v in enumerate(required) if v.startswith("--")]
    if flags:  # a missing required flag
        first = flags[0]
        proc = gpt2(command, *required[:first], *required[first + 2:])
        assert proc.returncode == 2 and re.search("arguments? .*(are|is) required", _last_line(proc))
    paths = [i + 1 for i in flags if required[i + 1] in values.values()]
    if paths:  # a path that does not exist
        bad = list(required)
        bad[paths[0]] = "/nonexistent/input"
        proc = gpt2(command, *bad)
        assert proc.returncode == 2 and "/nonexistent/input: no such file or directory" in _last_line(proc)
    if number:  # a number that is not one
        proc = gpt2(command, *required, number, "lots")
        assert proc.returncode == 2 and "invalid" in _last_line(proc) and "'lots'" in _last_line(proc)
    assert flags or paths or number


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_outputs_get_the_modes_the_umask_gives(tmp_path, umask, file_mode, dir_mode):
    """A project folder shared on a cluster stays readable: no 0600 temp-file modes on outputs."""
    code = ("import sys; from gpt2.files import atomic_dir, atomic_path\n"
            "with atomic_path(sys.argv[1] + '/f.txt') as t: t.write_text('x')\n"
            "with atomic_dir(sys.argv[1] + '/d', 'test') as d: (d / 'g.txt').write_text('y')\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=_env(), check=True,
                   preexec_fn=lambda: os.umask(umask))
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "d").stat().st_mode & 0o777 == dir_mode


def test_staging_folders_a_killed_run_left_are_removed_at_the_next_write(tmp_path):
    from gpt2.files import atomic_dir

    stale = [tmp_path / ".shards.k2j4h1ab.tmp", tmp_path / ".shards.k2j4h1ab.old"]
    theirs = tmp_path / ".shards-notes.tmp"
    for path in [*stale, theirs]:
        path.mkdir()
        (path / "half.bin").write_bytes(b"partial")
    with atomic_dir(tmp_path / "shards", "test") as staging:
        (staging / "a.bin").write_bytes(b"whole")
    assert not any(p.exists() for p in stale) and theirs.exists()
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [".gpt2-output", "a.bin"]
