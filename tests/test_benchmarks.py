"""The benchmarks' logic, on the CPU: the GPU script's smoke run and the alternating timer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile

from conftest import ROOT, SNAKEMAKE

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_gpu_workflow_script_runs_every_stage_on_the_cpu(tiny_run, tmp_path):
    """The one-shot GPU script (prepare here, run there) with SMOKE=1: same stages, tiny model, CPU."""
    work, out = tmp_path / "work", tmp_path / "out"
    shutil.copytree(tiny_run, work, symlinks=True)  # shards, vocab and Snakemake's records, mtimes kept
    out.mkdir()
    env = dict(os.environ, PYTHON=sys.executable, SNAKEMAKE=str(SNAKEMAKE), GPU_WORK=str(work), OUT=str(out))
    script = str(ROOT / "benchmarks/gpu_workflow.sh")
    prepared = subprocess.run(["bash", script, "prepare"], env=env, capture_output=True, text=True, timeout=600)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    train_cmd = (work / ".gpu/train.sh").read_text()
    assert train_cmd.startswith("python -m gpt2 train --shards results/shards/manifest.json")
    for flag in ("--gpus=1", "--seq_len=1024", "--batch_tokens=524288", "--compile=auto", "--amp=auto"):
        assert flag in train_cmd  # presets/gpu.yaml reached the rule's command
    assert "--device=cuda" in (work / ".gpu/evaluate.sh").read_text()

    proc = subprocess.run(["bash", script, "run"], env=dict(env, SMOKE="1"), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = json.loads((work / "results/gpu/summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["train", "evaluate", "resume_killed", "resume", "generate",
                                                       "decode", "speed", "memory"]
    assert [(r["model"], "error" in r) for r in summary["speed"]] == [("ours", False), ("ours", False), ("hf", False)]
    assert summary["speed"][0]["vs_hf"] > 0 and summary["loop"]["tokens_per_second"] > 0
    assert 0 <= summary["loop"]["data_wait"] < 1 and summary["loop_vs_step"] > 0
    resume = summary["resume"]  # fp32 on the CPU: a resumed run repeats the uninterrupted one
    assert resume["checkpoint_step"] in (6, 12, 18) and resume["last_step"] == 24 and resume["max_final_diff"] < 1e-4
    assert [d["method"] for d in summary["decode"]] == ["kv_cache", "recompute"]
    assert [(m["size"], m["grad_ckpt"]) for m in summary["memory"]] == [("tiny", False), ("tiny", True)]
    assert summary["evaluate_tokens_per_second"] > 0 and "| 3 resume |" in proc.stdout
    with tarfile.open(out / "gpu_results.tgz") as packed:  # what the device tool brings back
        assert {"gpu/summary.json", "gpu/train_small.log", "gpu/profile.txt"} <= set(packed.getnames())


def test_alternate_reports_median_and_range():
    from common import alternate

    calls = []
    result = alternate({"a": lambda: calls.append("a") or 100, "b": lambda: calls.append("b") or 50}, repeats=5)
    assert calls == ["a", "b"] * 6  # one warm-up round, then five interleaved timed rounds
    assert set(result) == {"a", "b"} and len(result["a"]["runs"]) == 5
    assert result["a"]["min"] <= result["a"]["median"] <= result["a"]["max"]


def test_the_quality_curve_interpolates_tokens_and_seconds_to_a_loss():
    from bench_quality import Curve

    curve = Curve()
    curve.points = [(100, 1.0, 5.0), (200, 2.0, 3.0), (300, 3.0, 2.5)]
    assert curve.first_reaching(6.0) == (100.0, 1.0) and curve.first_reaching(4.0) == (150.0, 1.5)
    assert curve.first_reaching(2.0) is None
    assert curve.loss_at_seconds(2.5) == 3.0 and curve.loss_at_seconds(0.5) == float("inf")


def test_the_quality_sweep_grows_past_an_edge_and_picks_by_validation_only(monkeypatch):
    """A best lr at the grid's edge is not tuned: the grid doubles past it; the test score never chooses."""
    import bench_quality

    def fake_run(name, manifest, arch, p):  # validation best at lr 0.012; test best at 0.0015
        valid = abs(p.lr - 0.012)
        return {"seed": p.seed, "lr": p.lr, "curve": [(1, 1.0, valid)], "test_bits_per_byte": abs(p.lr - 0.0015)}

    monkeypatch.setattr(bench_quality, "run_one", fake_run)
    arm = bench_quality.tune("adamw cosine", None, None, bench_quality.TrainParams(), [6e-4, 1.5e-3, 3e-3],
                             [1, 2, 3])
    assert [r["lr"] for r in arm["sweep"]] == [6e-4, 1.5e-3, 3e-3, 6e-3, 1.2e-2]
    assert arm["chosen"] == 1.2e-2 and arm["edge"] and [r["seed"] for r in arm["runs"]] == [1, 2, 3]
