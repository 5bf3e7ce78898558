"""Corpus stage on bigger dumps: the scatter-gather DAG with one extraction job and one bucket (the
defaults) versus with --chunks of each.

Dumps of 1x, 8x and 32x the bundled sample (its pages replicated under new ids and titles) are
written as one multistream file with its index (100 pages a stream, as Wikimedia writes them).
Each is built twice at --cores 2: as dump.source path (one file, one extraction job, one bucket) and
as dump.source wiki from a local mirror (extraction jobs per piece of the file, --chunks buckets). Per
stage: wall time, CPU time and peak RSS from the rules' benchmark files (several jobs of a stage:
their sums and the largest RSS; Snakemake samples CPU time, missing short-lived worker processes);
for the whole run, wall time and the exact CPU time of all its processes (os.times). Named peers in the same run: `bzip2 -dc` on the 32x file and
gensim's segment_wiki (1 worker) on the 8x file, in MB of XML per second per core.
"""

from __future__ import annotations

import argparse
import bz2
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import ROOT, table, write

sys.path.insert(0, str(ROOT / "tests"))
from wikidump import dump_files, replicate, sample_export, write_mirror  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
DATE = "20260101"


def snakemake(work: Path, config: str, target: str) -> tuple[float, float]:
    """(wall, CPU) seconds of a whole run: the CPU of every process it started, exited or not sampled."""
    (work / "bench.yaml").write_text(config)
    start, before = time.perf_counter(), os.times()
    subprocess.run([SNAKEMAKE, target, "-s", str(ROOT / "Snakefile"), "--directory", str(work), "--cores", "2",
                    "--configfile", str(work / "bench.yaml")], check=True, capture_output=True)
    after = os.times()
    return time.perf_counter() - start, (after.children_user + after.children_system
                                         - before.children_user - before.children_system)


def stages(work: Path) -> dict[str, dict]:
    """stage -> jobs, summed wall and CPU seconds, largest RSS, from results/benchmarks/."""
    out: dict[str, dict] = {}
    for tsv in sorted((work / "results/benchmarks").rglob("*.tsv")):
        stage = tsv.relative_to(work / "results/benchmarks").parts[0].removesuffix(".tsv")
        b = pd.read_csv(tsv, sep="\t").iloc[-1]
        row = out.setdefault(stage, {"jobs": 0, "wall s": 0.0, "cpu s": 0.0, "max RSS MB": 0.0})
        row["jobs"] += 1
        row["wall s"] += float(b["s"])
        row["cpu s"] += float(b["cpu_time"])
        row["max RSS MB"] = max(row["max RSS MB"], float(b["max_rss"]))
    return out


def build(times: int, root: Path, chunks: int) -> tuple[list[dict], dict]:
    header, pages, footer = sample_export()
    files = dump_files("simplewiki", DATE, [replicate(pages, times)], header, footer, per_stream=100)
    mirror = write_mirror(root / f"mirror{times}", "simplewiki", DATE, files)
    data = next(mirror.glob(f"simplewiki/{DATE}/*multistream.xml.bz2"))
    xml_mb = len(bz2.decompress(data.read_bytes())) / 1e6
    runs = {"one job each": (f"dump: {{source: path, path: {data}}}\n", "path"),
            "scatter-gather": (f"dump: {{source: wiki, wiki: simplewiki, date: '{DATE}', mirror: {mirror}}}\n"
                               f"corpus: {{extract_jobs: {chunks}, buckets: {chunks}, threads: 1}}\n", "wiki")}
    rows, totals = [], {"dump": f"{times}x", "bz2 MB": data.stat().st_size / 1e6, "XML MB": xml_mb}
    for label, (config, _) in runs.items():
        work = root / f"{label.replace(' ', '-')}-{times}"
        work.mkdir()
        total, cpu = snakemake(work, config, "results/corpus/corpus.raw.txt")
        per_stage = stages(work)
        totals[f"{label} wall s"], totals[f"{label} cpu s"] = total, cpu
        totals[f"{label} MB bz2/cpu-s"] = totals["bz2 MB"] / cpu
        rows += [{"dump": f"{times}x", "run": label, "stage": name, **s} for name, s in per_stage.items()]
        rows.append({"dump": f"{times}x", "run": label, "stage": "(snakemake, whole)", "jobs": "",
                     "wall s": total, "cpu s": cpu, "max RSS MB": max(s["max RSS MB"] for s in per_stage.values())})
        articles = (work / "results/corpus/corpus.articles.tsv").read_text().count("\n") - 1
        totals[f"{label} articles/cpu-s"] = articles / cpu
    return rows, totals


def peers(root: Path) -> list[dict]:
    """bzip2 -dc on the 32x file and gensim's segment_wiki (1 worker) on the 8x file, per core."""
    out = []
    for times, label, cmd in ((32, "bzip2 -dc", lambda d: ["bzip2", "-dc", str(d)]),
                              (8, "gensim segment_wiki (1 worker)",
                               lambda d: [sys.executable, "-m", "gensim.scripts.segment_wiki", "-f", str(d), "-o",
                                          str(root / "gensim.json.gz"), "-w", "1"])):
        data = next((root / f"mirror{times}").glob(f"simplewiki/{DATE}/*multistream.xml.bz2"))
        xml_mb = len(bz2.decompress(data.read_bytes())) / 1e6
        start = time.perf_counter()
        subprocess.run(cmd(data), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        out.append({"peer": label, "dump": f"{times}x", "XML MB": xml_mb, "wall s": seconds,
                    "XML MB/s": xml_mb / seconds})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--times", type=int, nargs="+", default=[1, 8, 32], help="dump sizes, in samples")
    parser.add_argument("--chunks", type=int, default=4, help="corpus.extract_jobs and corpus.buckets of the scatter-gather runs")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    rows, totals = [], []
    for times in args.times:
        stage_rows, summary = build(times, root, args.chunks)
        rows += stage_rows
        totals.append(summary)
        print(table(stage_rows, ["dump", "run", "stage", "jobs", "wall s", "cpu s", "max RSS MB"]), flush=True)
    peer_rows = peers(root) if {8, 32} <= set(args.times) else []
    print(table(totals, list(totals[0])))
    if peer_rows:
        print(table(peer_rows, list(peer_rows[0])))
    write("corpus", {"stages": rows, "totals": totals, "peers": peer_rows, "chunks": args.chunks})


if __name__ == "__main__":
    main()
