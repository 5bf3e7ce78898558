"""Extraction CPU time per MB of XML: this workflow's extract-chunk against gensim's segment_wiki, side by side.

Dumps of 1x, 4x and 32x the bundled sample (its pages replicated under new page ids and titles), one
multistream bz2 file each. On each, alternating, `repeats` times:
  ours    python -m gpt2 extract-chunk --threads 1: bz2 + XML, wikitext cleaning (gpt2.wikitext), sentence
          splitting (Punkt), length and hole filters, the audit, the bucket files
  gensim  python -m gensim.scripts.segment_wiki -w 1: bz2 + XML, a regex markup filter per section, JSON
          lines of sections (no sentence splitting, no audit)
CPU time is that of the process and all its children (os.times), so worker processes count. The table
gives the medians in CPU-seconds per MB of XML, ours / gensim, and each tool's largest RSS of any of
its processes (flat from 1x to 32x: no job holds more than a page); the JSON, every run.
"""

from __future__ import annotations

import argparse
import bz2
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, table, write

sys.path.insert(0, str(ROOT / "tests"))
from wikidump import multistream, replicate, sample_export  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))


# Runs a command and prints the CPU seconds and the largest RSS (MB) of it and every process it started.
MEASURE = ("import os, resource, subprocess, sys; before = os.times(); "
           "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
           "t = os.times(); print(t.children_user + t.children_system - before.children_user - before.children_system, "
           "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")


def measure(cmd: list[str]) -> tuple[float, float, float]:
    """(CPU seconds, wall seconds, largest RSS in MB) of a command and every process it started."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], check=True, capture_output=True, text=True, env=ENV)
    cpu, rss = map(float, out.stdout.split())
    return cpu, time.perf_counter() - start, rss


def commands(dump: Path, expanda: Path, work: Path) -> dict[str, list[str]]:
    out = work / "ours"
    return {
        "ours": ["bash", "-c", 'rm -rf "$1" && exec "$0" -m gpt2 extract-chunk --dump "$2" --piece 0 --pieces 1 '
                               '--expanda "$3" --out "$1" --threads 1', sys.executable, str(out), str(dump),
                 str(expanda)],
        "gensim": [sys.executable, "-m", "gensim.scripts.segment_wiki", "-f", str(dump), "-o",
                   str(work / "gensim.json.gz"), "-w", "1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--times", type=int, nargs="+", default=[1, 4, 32], help="dump sizes, in samples")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    expanda = work / "expanda"
    subprocess.run([sys.executable, "-m", "gpt2", "patch-expanda", "--out", str(expanda), "--patches",
                    *map(str, sorted((ROOT / "patches").glob("*.patch")))], check=True, env=ENV, capture_output=True)
    header, pages, footer = sample_export()
    rows, runs = [], []
    for times in args.times:
        data, _ = multistream(header, replicate(pages, times), footer, per_stream=100)
        dump = work / f"sample{times}x.xml.bz2"
        dump.write_bytes(data)
        xml_mb = len(bz2.decompress(data)) / 1e6
        cpu: dict[str, list[float]] = {}
        rss: dict[str, float] = {}
        for _ in range(args.repeats):
            for tool, cmd in commands(dump, expanda, work).items():
                seconds, wall, peak = measure(cmd)
                cpu.setdefault(tool, []).append(seconds)
                rss[tool] = max(rss.get(tool, 0.0), peak)
                runs.append({"dump": f"{times}x", "tool": tool, "cpu_s": seconds, "wall_s": wall, "xml_mb": xml_mb,
                             "max_rss_mb": peak})
        ours, gensim = (statistics.median(cpu[t]) / xml_mb for t in ("ours", "gensim"))
        rows.append({"dump": f"{times}x", "XML MB": xml_mb, "ours cpu-s/MB": ours, "gensim cpu-s/MB": gensim,
                     "ours / gensim": ours / gensim, "ours MB/cpu-s": 1 / ours, "gensim MB/cpu-s": 1 / gensim,
                     "ours max RSS MB": rss["ours"], "gensim max RSS MB": rss["gensim"]})
        print(table(rows[-1:], list(rows[-1])), flush=True)
    print(table(rows, list(rows[0])))
    write("extract", {"rows": rows, "runs": runs, "repeats": args.repeats})


if __name__ == "__main__":
    main()
