"""Pipeline: wall time of every stage on the bundled sample, from the rules' benchmark: files (a fresh
run of the `tiny` model in a temp folder, plus this checkout's results/ when `make run` made them),
and the time of a no-op `snakemake -n` on the finished workflow (median of 5)."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import ROOT, table, write

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = ("train: {steps: 100, batch_tokens: 4096, micro_batch: 32, lr: 0.003, eval_every: 50, checkpoint_every: 50,"
        " log_every: 10}\n")


def snakemake(workdir: Path, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def stage_times(workdir: Path, label: str) -> list[dict]:
    rows = []
    for tsv in sorted((workdir / "results/benchmarks").rglob("*.tsv")):
        b = pd.read_csv(tsv, sep="\t").iloc[-1]
        rows.append({"run": label, "stage": tsv.relative_to(workdir / "results/benchmarks").as_posix()[:-4],
                     "wall s": float(b["s"]), "max RSS MB": float(b["max_rss"])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args()
    work = Path(tempfile.mkdtemp())
    (work / "tiny.yaml").write_text(TINY)
    config = ("--configfile", str(work / "tiny.yaml"))
    total = snakemake(work, "results/eval_tiny.json", *config)
    rows = stage_times(work, "sample, tiny")
    if (ROOT / "results/eval_small.json").exists():
        rows += stage_times(ROOT, "make run (small)")
    noop = [snakemake(work, "-n", "results/eval_tiny.json", *config) for _ in range(5)]
    print(table(rows, ["run", "stage", "wall s", "max RSS MB"]))
    print(f"whole sample run (tiny): {total:.1f} s; no-op `snakemake -n`: median {statistics.median(noop):.2f} s "
          f"(min {min(noop):.2f}, max {max(noop):.2f})")
    write("pipeline", {"stages": rows, "total_seconds": total, "noop_seconds": noop})


if __name__ == "__main__":
    main()
