"""The benchmarks' logic, on the CPU: the GPU script's smoke run and the alternating timer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_gpu_script_smoke_run_on_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu.sh"), "--device", "cpu", "--steps", "2", "--warmup",
                           "1", "--batch", "1", "--seq", "32", "--vocab", "512"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "gpu.json").read_text())["results"]
    assert [r["model"] for r in results] == ["ours", "hf"]
    assert all(r["tokens_per_second"] > 0 and 0 < r["mfu"] < 1 for r in results)
    assert "ours/HF:" in proc.stdout


def test_alternate_reports_median_and_range():
    from common import alternate

    calls = []
    result = alternate({"a": lambda: calls.append("a") or 100, "b": lambda: calls.append("b") or 50}, repeats=5)
    assert calls == ["a", "b"] * 6  # one warm-up round, then five interleaved timed rounds
    assert set(result) == {"a", "b"} and len(result["a"]["runs"]) == 5
    assert result["a"]["min"] <= result["a"]["median"] <= result["a"]["max"]
