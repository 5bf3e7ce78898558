"""Stage 3: expanda's token lines -> uint16 token-id shards + manifest.json.

Layout: each split is one stream of token ids, every corpus line followed by
the `</s>` id, lines packed back to back (no padding). The stream is cut into
`<split>_NNNNNN.bin` files of at most `shard_tokens` ids, raw little-endian
uint16, so `numpy.memmap(path, dtype="<u2")` reads a shard without copying.
Ids are the line numbers of vocab.txt as it is (expanda already put
`<unk> <s> </s> <pad>` first).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt2 import UserError
from gpt2.files import atomic_dir, file_digest
from gpt2.params import ShardsParams
from gpt2.vocab import EOS_ID, SPECIALS, UNK_ID, load_vocab

DTYPE = np.dtype("<u2")
BATCH_LINES = 4096


class ShardWriter:
    """Appends id arrays to `<prefix>_NNNNNN.bin` files of at most `shard_tokens` ids."""

    def __init__(self, folder: Path, prefix: str, shard_tokens: int):
        self.folder, self.prefix, self.shard_tokens = folder, prefix, shard_tokens
        self.shards: list[dict] = []
        self.fh = None
        self.in_shard = 0

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.fh is None or self.in_shard == self.shard_tokens:
                self._next_shard()
            take = ids[: self.shard_tokens - self.in_shard]
            self.fh.write(take.data)  # a short write raises OSError with its errno (tofile hides it)
            self.in_shard += len(take)
            self.shards[-1]["tokens"] += len(take)
            ids = ids[len(take):]

    def _next_shard(self) -> None:
        self.close()
        name = f"{self.prefix}_{len(self.shards):06d}.bin"
        self.fh = open(self.folder / name, "wb")
        self.shards.append({"file": f"{self.prefix}/{name}", "tokens": 0})
        self.in_shard = 0

    def close(self) -> None:
        if self.fh is not None:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            self.fh = None


def encode_lines(lines: list[str], vocab: dict[str, int], unk: int, eos: int) -> tuple[np.ndarray, int]:
    """Ids of a batch of token lines, each followed by `eos`; also how many tokens were not in the vocab."""
    ids: list[int] = []
    get = vocab.get
    for line in lines:
        ids.extend([get(t, -1) for t in line.split()])
        ids.append(eos)
    arr = np.asarray(ids, dtype=np.int32)
    missing = arr < 0
    arr[missing] = unk
    return arr.astype(DTYPE), int(missing.sum())


def shard_split(corpus: Path, vocab: dict[str, int], folder: Path, prefix: str, shard_tokens: int) -> dict:
    """Stream one corpus file into shards; returns its manifest entry."""
    folder.mkdir(parents=True)
    writer = ShardWriter(folder, prefix, shard_tokens)
    unk, eos = UNK_ID, EOS_ID
    lines = tokens = unknown = missing_total = 0
    size = corpus.stat().st_size
    with open(corpus, encoding="utf-8") as fh, tqdm(total=size, unit="B", unit_scale=True, desc=prefix,
                                                     mininterval=2) as bar:
        while batch := [line for _, line in zip(range(BATCH_LINES), fh)]:
            ids, missing = encode_lines(batch, vocab, unk, eos)
            writer.write(ids)
            lines, tokens, missing_total = lines + len(batch), tokens + len(ids), missing_total + missing
            unknown += int(np.count_nonzero(ids == unk))
            bar.update(sum(len(line.encode("utf-8")) for line in batch))
    writer.close()
    if tokens == 0:
        raise UserError(f"{corpus}: empty corpus, nothing to shard; check the corpus stage's log")
    for shard in writer.shards:
        shard["sha256"] = file_digest(folder.parent / shard["file"])
    return {"lines": lines, "tokens": tokens, "unk_tokens": unknown, "missing_from_vocab": missing_total,
            "shards": writer.shards}


def make_shards(vocab_path: Path, train_corpus: Path, test_corpus: Path, out: Path, params: ShardsParams) -> dict:
    """Write train/ and test/ shards and manifest.json into the folder `out`, all or nothing."""
    vocab = load_vocab(vocab_path)
    corpora = {"train": Path(train_corpus), "test": Path(test_corpus)}
    started = time.perf_counter()
    with atomic_dir(out) as staging:
        splits = {name: shard_split(path, vocab, staging / name, name, params.shard_tokens)
                  for name, path in corpora.items()}
        seconds = time.perf_counter() - started
        total = sum(s["tokens"] for s in splits.values())
        manifest = {
            "format": "raw little-endian uint16 token ids; every corpus line followed by </s>, packed",
            "dtype": DTYPE.str,
            "vocab": os.path.relpath(vocab_path, out),  # relative to this manifest's folder
            "vocab_size": len(vocab),
            "vocab_sha256": file_digest(vocab_path),
            "sources_sha256": {name: file_digest(path) for name, path in corpora.items()},
            "special_ids": {token: vocab[token] for token in SPECIALS},
            "eos_id": EOS_ID,
            "shard_tokens": params.shard_tokens,
            "splits": splits,
            "tokens_per_second": round(total / seconds),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for name, split in splits.items():
        print(f"{name}: {split['lines']:,} lines, {split['tokens']:,} tokens, {split['unk_tokens']:,} <unk> "
              f"({split['missing_from_vocab']:,} not in vocab.txt), "
              f"{len(split['shards'])} shard(s)", file=sys.stderr)
    print(f"sharded {total:,} tokens in {seconds:.2f}s ({total / seconds:,.0f} tokens/s)", file=sys.stderr)
    return manifest


def shards_for_text(vocab_path: Path, train_corpus: Path, test_corpus: Path, out: Path) -> Path:
    """Shards of expanda's text files in `out`, made once and reused while vocab and corpora are unchanged.

    Processes that start together (torchrun ranks) take a file lock: the
    first shards, the others wait and then reuse its shards.
    """
    out = Path(out)
    manifest = out / "manifest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if manifest.is_file():
            made = json.loads(manifest.read_text())
            same = made.get("vocab_sha256") == file_digest(vocab_path) and made.get("sources_sha256") == {
                "train": file_digest(train_corpus), "test": file_digest(test_corpus)}
            if same:
                print(f"reusing the shards in {out}: vocab and corpora are unchanged", file=sys.stderr)
                return manifest
        make_shards(vocab_path, train_corpus, test_corpus, out, ShardsParams())
    return manifest


def manifest_for(shards: Path | None, train_corpus: Path | None, eval_corpus: Path | None,
                 vocab_path: Path | None, out: Path, need_train: bool) -> Path:
    """The shards manifest a command reads: `--shards`, or one made from expanda's text files into `out`.

    `--eval_corpus` may name a manifest too (the reference repo's flag).
    Training needs a train corpus; evaluation makes do without one (the
    unigram baseline is then left out).
    """
    if shards is None and eval_corpus is not None and eval_corpus.suffix == ".json":
        shards = eval_corpus
    if shards is not None:
        return shards
    if eval_corpus is None:
        raise UserError("give --shards MANIFEST, or --eval_corpus with --vocab_path (expanda's text files)")
    if vocab_path is None:
        raise UserError("--vocab_path is needed with text corpora (expanda's vocab.txt)")
    if need_train and train_corpus is None:
        raise UserError(f"--train_corpus is needed with a text --eval_corpus: without it, training would "
                        f"train on {eval_corpus}")
    return shards_for_text(vocab_path, train_corpus or eval_corpus, eval_corpus, out)


def check_vocab(manifest_path: str | os.PathLike) -> None:
    """The vocab.txt the manifest names must still be the one the shards were made with."""
    manifest = json.loads(Path(manifest_path).read_text())
    vocab = Path(manifest_path).parent / manifest["vocab"]
    if vocab.is_file() and file_digest(vocab) != manifest["vocab_sha256"]:
        raise UserError(f"{manifest_path}: its shards were made with another {vocab} (sha256 differs); "
                        "re-run make_shards (snakemake does when vocab.txt changes)")


class TokenStream:
    """A split's shards as one read-only sequence of ids, memory-mapped (no copies within a shard)."""

    def __init__(self, manifest_path: str | os.PathLike, split: str):
        manifest_path = Path(manifest_path)
        self.manifest = json.loads(manifest_path.read_text())
        shards = self.manifest["splits"][split]["shards"]
        self.parts = [np.memmap(manifest_path.parent / s["file"], dtype=DTYPE, mode="r") for s in shards]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """ids[start:start+length], joining shards only where the window crosses a boundary."""
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        offset = start - int(self.starts[i])
        if offset + length <= len(self.parts[i]):
            return self.parts[i][offset: offset + length]
        pieces, need = [], length
        while need > 0:
            piece = self.parts[i][offset: offset + need]
            pieces.append(piece)
            need -= len(piece)
            i, offset = i + 1, 0
        return np.concatenate(pieces)
