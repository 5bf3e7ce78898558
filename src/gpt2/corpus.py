"""Stage 2: the hand edit of expanda as a rule, then expanda's corpus build.

`patch_expanda` copies the installed expanda 1.3.1 into a private folder and
applies patches/*.patch there (site-packages is never touched).
`build_corpus` renders expanda.cfg, runs `python -m expanda build` with that
copy first on PYTHONPATH in a throw-away workspace, and moves the corpus files
into place only once they are all valid. The patches make articles the unit
(patches/0005-0006) and the vocabulary reproducible (0007); README.md says how.
"""

from __future__ import annotations

import collections
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from gpt2 import UserError
from gpt2.files import atomic_dir, file_digest
from gpt2.params import CorpusParams
from gpt2.vocab import BOS, EOS, PAD, SPECIALS, UNK

EXPANDA_VERSION = "1.3.1"
TEXT_FILES = ("vocab.txt", "corpus.raw.txt", "corpus.train.txt", "corpus.valid.txt", "corpus.test.txt")
ARTICLES = "corpus.articles.tsv"  # unit article: split, page id, title and lines of each article, in order


def corpus_files(unit: str) -> tuple[str, ...]:
    """The files a corpus build writes: the article sidecar only where articles are the unit."""
    return TEXT_FILES + ((ARTICLES,) if unit == "article" else ())


def installed_expanda() -> Path:
    """The installed expanda package folder, checked to be the version the patches target."""
    try:
        version = importlib.metadata.version("expanda")
    except importlib.metadata.PackageNotFoundError:
        raise UserError("expanda is not installed: run `make setup`") from None
    if version != EXPANDA_VERSION:
        raise UserError(f"expanda {version} is installed, but patches/ target {EXPANDA_VERSION}: "
                        f"pip install expanda=={EXPANDA_VERSION}")
    spec = importlib.util.find_spec("expanda")
    return Path(spec.submodule_search_locations[0])


def _apply_patch(patch: Path, tree: Path) -> None:
    cmd = ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-d", str(tree), "-i",
           str(patch.resolve())]
    dry = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True)
    if dry.returncode != 0:
        target, reason = "?", dry.stdout.strip().splitlines()[-1:] or [dry.stderr.strip()]
        for line in dry.stdout.splitlines():
            if line.startswith(("checking file ", "patching file ")):
                target = line.split(" file ", 1)[1].strip()
            if "FAILED" in line or "Reversed" in line or "can't find file" in line:
                reason = [line.strip()]
                break
        raise UserError(f"patch {patch.name} does not apply to expanda/{target}: {reason[0]}")
    subprocess.run(cmd, check=True, capture_output=True)


def patch_expanda(out: Path, patches: list[Path]) -> list[dict]:
    """Copy the installed expanda to `out`/expanda and apply `patches` in name order."""
    found = sorted(map(Path, patches), key=lambda p: p.name)
    if not found:
        raise UserError("no patches given: pass the *.patch files of patches/")
    applied = []
    with atomic_dir(out) as staging:
        tree = staging / "expanda"
        shutil.copytree(installed_expanda(), tree, ignore=shutil.ignore_patterns("__pycache__"))
        for patch in found:
            _apply_patch(patch, tree)
            applied.append({"patch": patch.name, "sha256": file_digest(patch)})
            print(f"applied {patch.name}", file=sys.stderr)
        (staging / "patches.json").write_text(json.dumps(applied, indent=2) + "\n")
    return applied


def render_config(dump: Path, params: CorpusParams) -> str:
    """expanda.cfg for one dump; outputs land in build/ inside the workspace."""
    reuse = f"input-vocab = {Path(params.input_vocab).resolve()}\n" if params.input_vocab else ""
    return f"""[expanda.ext.wikipedia]
num-cores = {params.threads}
min-length = {params.min_length}
max-length = {params.max_length}
split-sent = {str(params.split_sent).lower()}
unit = {params.unit}

[tokenization]
unk-token = {UNK}
control-tokens = {BOS}
                 {EOS}
                 {PAD}
vocab-size = {params.vocab_size}
limit-alphabet = {params.limit_alphabet}
subset-size = {params.subset_size}

[build]
input-files =
    --expanda.ext.wikipedia {Path(dump).resolve()}
temporary-path = tmp
seed = {params.seed}
unit = {params.unit}
split-ratio = {params.split_ratio}
valid-ratio = {params.valid_ratio}
{reuse}output-vocab = build/vocab.txt
output-raw-corpus = build/corpus.raw.txt
output-train-corpus = build/corpus.train.txt
output-valid-corpus = build/corpus.valid.txt
output-test-corpus = build/corpus.test.txt
output-articles = build/{ARTICLES}
"""


def _run_expanda(workspace: Path, expanda_dir: Path) -> None:
    """Run `python -m expanda build`, passing its output through; fail with its real error."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(expanda_dir).resolve())] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    tail: collections.deque[str] = collections.deque(maxlen=200)
    with subprocess.Popen([sys.executable, "-m", "expanda", "build", "expanda.cfg"], cwd=workspace, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            sys.stderr.write(line)
            tail.append(line.rstrip("\n"))
    if proc.returncode != 0:
        errors = [line for line in tail if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)]
        raise UserError(f"expanda build failed: {errors[-1] if errors else f'exit code {proc.returncode}'}")


def check_outputs(build: Path, unit: str) -> None:
    """Every file non-empty, vocab starts with the specials, corpus lines are token lists."""
    for name in corpus_files(unit):
        path = build / name
        if not path.is_file() or path.stat().st_size == 0:
            raise UserError(f"expanda produced no {name}: the dump yielded no sentences between "
                            "corpus.min_length and corpus.max_length")
    with open(build / "vocab.txt", encoding="utf-8") as fh:
        head = tuple(fh.readline().rstrip("\n") for _ in SPECIALS)
    if head != SPECIALS:
        raise UserError(f"expanda's vocab.txt starts with {head}, expected {SPECIALS}")
    for name in ("corpus.train.txt", "corpus.valid.txt", "corpus.test.txt"):
        with open(build / name, encoding="utf-8") as fh:
            for number, line in zip(range(1, 1001), fh):
                if "\t" in line or "  " in line.strip():
                    raise UserError(f"expanda's {name} line {number} is not space-separated WordPiece tokens")


def build_corpus(dump: Path, expanda: Path, out: Path, params: CorpusParams) -> dict:
    """Build the corpus of `dump` into the folder `out` (its `corpus_files`) and return line counts."""
    if params.input_vocab and not Path(params.input_vocab).is_file():
        raise UserError(f"corpus.input_vocab {params.input_vocab!r} is not a file: name an existing vocab.txt "
                        "or leave it empty to train one")
    if params.min_length >= params.max_length:
        raise UserError(f"corpus.min_length ({params.min_length}) must be below "
                        f"corpus.max_length ({params.max_length})")
    with atomic_dir(out) as staging:
        workspace = staging / "workspace"
        workspace.mkdir()
        (workspace / "expanda.cfg").write_text(render_config(dump, params))
        _run_expanda(workspace, expanda)
        check_outputs(workspace / "build", params.unit)
        counts = {name: _count_lines(workspace / "build" / name) for name in corpus_files(params.unit)}
        for name in corpus_files(params.unit):
            os.replace(workspace / "build" / name, staging / name)
        shutil.rmtree(workspace)
    print(f"corpus: {counts}", file=sys.stderr)
    return counts


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
