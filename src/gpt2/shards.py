"""Stage 3: the corpus's token lines -> uint16 token-id shards + manifest.json.

Layout: each split (train, valid, test) is one stream of token ids made of
documents packed back to back (no padding). A document is an article (its
sentences' tokens in order: WordPiece puts nothing between them, the BPE the
space that joins them, vocab.document_tokens) or, for text corpora given to
`train --train_corpus` without an article table, one line (unit "sentence" in
the manifest), and ends with the end-of-document id (`</s>` or `<|endoftext|>`,
the manifest's eos_id). The stream is cut into `<split>_NNNNNN.bin` files of at
most `shard_tokens` ids, raw little-endian uint16, so
`numpy.memmap(path, dtype="<u2")` reads a shard without copying. Ids are the
vocabulary's: the line numbers of vocab.txt as it is (expanda already put
`<unk> <s> </s> <pad>` first), or the ids in tokenizer.json.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import json
import mmap
import os
import sys
import time
from pathlib import Path
from typing import IO, Iterator

import numpy as np
from tqdm import tqdm

from gpt2 import UserError
from gpt2.articles import read_articles
from gpt2.files import atomic_dir, file_digest, link_or_copy
from gpt2.params import ShardsParams
from gpt2.vocab import UNK, document_tokens, eos_id, load_tokenizer, load_vocab, special_ids

DTYPE = np.dtype("<u2")
COUNTS = "counts.npy"
BATCH_DOCS = 1024


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


Document = tuple[list[str], list[bytes]]  # token lines of expanda's corpus, and the same lines of raw text


def encode_documents(docs: list[Document], vocab: dict[str, int]) -> tuple[np.ndarray, int]:
    """Ids of a batch of documents, each its lines' tokens back to back then the end-of-document id; also
    how many tokens were not in the vocab (they become `<unk>`; a BPE vocabulary lacks none)."""
    ids: list[int] = []
    get, end = vocab.get, eos_id(vocab)
    for lines, _ in docs:
        for line in lines:
            ids.extend([get(t, -1) for t in line.split()])
        ids.append(end)
    arr = np.asarray(ids, dtype=np.int32)
    missing = arr < 0
    if missing.any() and UNK not in vocab:
        raise UserError(f"{int(missing.sum()):,} tokens are not in the BPE vocabulary: the token files were made "
                        "with another tokenizer; rebuild the corpus")
    arr[missing] = vocab.get(UNK, 0)
    return arr.astype(DTYPE), int(missing.sum())


def article_sizes(articles: Path, split: str) -> list[int]:
    """Lines of each article of `split`, in corpus order, from expanda's corpus.articles.tsv."""
    return [a.lines for a in read_articles(articles) if a.split == split]


def documents(tokens: IO[str], raw: IO[bytes] | None, sizes: list[int] | None,
              last: bool = True) -> Iterator[Document]:
    """The documents of one split: runs of `sizes` lines (articles), or every line alone (no article table).

    `last`: the split ends the file, so no line may be left after it.
    """
    if sizes is None:
        for line in tokens:
            yield [line], [raw.readline()] if raw else []
        return
    for size in sizes:
        lines = list(itertools.islice(tokens, size))
        if len(lines) < size:
            raise UserError(f"{tokens.name} has fewer lines than corpus.articles.tsv gives its articles; "
                            "rebuild the corpus")
        yield lines, [raw.readline() for _ in range(size)] if raw else []
    if last and tokens.readline():
        raise UserError(f"{tokens.name} has more lines than corpus.articles.tsv gives its articles; "
                        "rebuild the corpus")


def _text_block(docs: list[Document]) -> bytes:
    """Raw text of documents as test/text.txt holds it: a line per raw line, a blank line after each document."""
    return b"".join(b"".join(r if r.endswith(b"\n") else r + b"\n" for r in raw) + b"\n" for _, raw in docs)


def shard_split(docs: Iterator[Document], vocab: dict[str, int], folder: Path, prefix: str, shard_tokens: int,
                has_raw: bool, text: Path | None = None) -> dict:
    """Stream one split's documents into shards (and their raw text into `text`); returns its manifest entry.

    `bytes` counts the UTF-8 bytes of every raw line plus one for the separator after it (a space inside
    an article, the newline that `</s>` stands for at its end); null without raw text.
    """
    folder.mkdir(parents=True)
    writer = ShardWriter(folder, prefix, shard_tokens)
    counts = collections.Counter()
    token_counts = np.zeros(len(vocab), dtype=np.int64)  # how often each id occurs: the unigram model's data
    with contextlib.ExitStack() as stack:
        text_fh = stack.enter_context(open(text, "wb")) if text else None
        bar = stack.enter_context(tqdm(desc=prefix, unit=" docs", mininterval=2))
        while batch := list(itertools.islice(docs, BATCH_DOCS)):
            ids, missing = encode_documents(batch, vocab)
            writer.write(ids)
            token_counts += np.bincount(ids, minlength=len(vocab))
            counts.update(documents=len(batch), lines=sum(len(lines) for lines, _ in batch), tokens=len(ids),
                          missing=missing, unk=int(np.count_nonzero(ids == vocab[UNK])) if UNK in vocab else 0,
                          bytes=sum(len(r.rstrip(b"\n")) + 1 for _, raw in batch for r in raw))
            if text_fh:
                text_fh.write(_text_block(batch))
            bar.update(len(batch))
    writer.close()
    if counts["tokens"] == 0:
        raise UserError(f"the {prefix} split is an empty corpus, nothing to shard; check the corpus stage's log")
    for shard in writer.shards:
        shard["sha256"] = file_digest(folder.parent / shard["file"])
    return {"documents": counts["documents"], "lines": counts["lines"], "tokens": counts["tokens"],
            "bytes": counts["bytes"] if has_raw else None, "unk_tokens": counts["unk"],
            "missing_from_vocab": counts["missing"], "shards": writer.shards,
            "counts": save_counts(folder, prefix, token_counts)}


def save_counts(folder: Path, split: str, counts: np.ndarray) -> str:
    """`folder`/counts.npy: each id's count in the split, so training and evaluation never re-read the
    split to count it (a whole wiki's train split is billions of ids); returns its name in the manifest."""
    np.save(folder / COUNTS, counts.astype("<i8"), allow_pickle=False)
    return f"{split}/{COUNTS}"


def make_shards(vocab_path: Path, train_corpus: Path, valid_corpus: Path, test_corpus: Path,
                raw_corpus: Path | None, articles: Path | None, out: Path, params: ShardsParams) -> dict:
    """Write train/, valid/ and test/ shards and manifest.json into the folder `out`, all or nothing.

    `articles` (expanda's corpus.articles.tsv) makes whole articles the documents; without it every line
    is one. `raw_corpus` (corpus.raw.txt: the test, valid and train lines in that order, as extracted)
    gives each split's byte count and the test split's raw text, test/text.txt, for bits per byte.
    """
    vocab = load_vocab(vocab_path)
    corpora = {"test": Path(test_corpus), "valid": Path(valid_corpus), "train": Path(train_corpus)}
    started = time.perf_counter()
    raw = open(raw_corpus, "rb") if raw_corpus else None
    try:
        with atomic_dir(out, "make-shards") as staging:
            splits = {}
            for name, path in corpora.items():  # in corpus.raw.txt's order
                sizes = article_sizes(articles, name) if articles else None
                text = staging / "test" / "text.txt" if name == "test" and raw else None
                with open(path, encoding="utf-8") as tokens:
                    splits[name] = shard_split(documents(tokens, raw, sizes), vocab, staging / name, name,
                                               params.shard_tokens, raw is not None, text)
            manifest = write_manifest(staging, splits, vocab_path, corpora, "article" if articles else "sentence",
                                      params, time.perf_counter() - started)
    finally:
        if raw:
            raw.close()
    return manifest


def write_manifest(folder: Path, splits: dict, vocab_path: Path, corpora: dict[str, Path], unit: str,
                   params: ShardsParams, seconds: float) -> dict:
    """`folder`/manifest.json for the `splits` written there; log a line per split."""
    vocab = load_vocab(vocab_path)
    total = sum(s["tokens"] for s in splits.values())
    manifest = {
        "format": "raw little-endian uint16 token ids; each document (an article, or a line of a text "
                  "corpus with unit sentence) is its lines' tokens back to back, then eos_id; documents packed",
        "unit": unit,
        "dtype": DTYPE.str,
        "vocab": os.path.relpath(vocab_path, folder),  # relative to the manifest (staging is beside its final place)
        "vocab_size": len(vocab),
        "vocab_sha256": file_digest(vocab_path),
        "sources_sha256": {name: file_digest(path) for name, path in corpora.items()},
        "special_ids": special_ids(vocab),
        "eos_id": eos_id(vocab),
        "shard_tokens": params.shard_tokens,
        "splits": splits,
        "tokens_per_second": round(total / seconds),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for name, split in splits.items():
        print(f"{name}: {split['documents']:,} documents, {split['lines']:,} lines, {split['tokens']:,} tokens, "
              f"{split['unk_tokens']:,} <unk> ({split['missing_from_vocab']:,} not in vocab.txt), "
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
                "test": file_digest(test_corpus), "valid": file_digest(test_corpus), "train": file_digest(train_corpus)}
            if same:
                print(f"reusing the shards in {out}: vocab and corpora are unchanged", file=sys.stderr)
                return manifest
        # The eval corpus serves as validation split too: the reference's training evaluates on it.
        make_shards(vocab_path, train_corpus, test_corpus, test_corpus, None, None, out, ShardsParams())
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


def text_stream(text: Path, vocab_path: Path) -> tuple[TokenStream, int]:
    """Raw text as the shards would hold it, and its bytes counted as `shard_split` counts them.

    A blank line ends a document (the end-of-document id, as does the end of the file); a document's
    lines are tokenized as the corpus tokenizes them (vocab.document_tokens). test/text.txt of the
    shards reads back to the same ids.
    """
    tokenizer = load_tokenizer(vocab_path)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    end = eos_id(vocab)
    ids: list[int] = []
    n_bytes = 0
    with open(text, encoding="utf-8") as fh:
        for doc in text_documents(fh):
            ids.extend(vocab[t] for tokens in document_tokens(tokenizer, doc) for t in tokens)
            ids.append(end)
            n_bytes += sum(len(line.encode("utf-8")) + 1 for line in doc)
    if len(ids) < 2:
        raise UserError(f"{text}: no text to score (a blank line separates documents)")
    return TokenStream.of(np.asarray(ids, dtype=DTYPE), tokenizer.get_vocab_size()), n_bytes


def text_documents(fh: IO[str]) -> Iterator[list[str]]:
    """The documents of a text file: runs of non-blank lines (without their newlines)."""
    doc: list[str] = []
    for line in fh:
        if line.strip():
            doc.append(line.rstrip("\n"))
        elif doc:
            yield doc
            doc = []
    if doc:
        yield doc


class TokenStream:
    """A split's shards as one read-only sequence of ids, memory-mapped (no copies within a shard)."""

    def __init__(self, manifest_path: str | os.PathLike, split: str):
        manifest_path = Path(manifest_path)
        self.manifest = json.loads(manifest_path.read_text())
        entry = self.manifest["splits"][split]
        self.parts = [np.memmap(manifest_path.parent / s["file"], dtype=DTYPE, mode="r") for s in entry["shards"]]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self._counts = manifest_path.parent / entry["counts"] if "counts" in entry else None

    def counts(self) -> np.ndarray:
        """How often each id of the vocabulary occurs in the stream: read from the shards' counts.npy (shards
        made before it existed, and streams in memory, are counted here, shard by shard)."""
        vocab_size = self.manifest["vocab_size"]
        if self._counts is not None:
            return np.load(self._counts, allow_pickle=False)
        counts = np.zeros(vocab_size, dtype=np.int64)
        for part in self.parts:
            counts += np.bincount(part, minlength=vocab_size)[:vocab_size]
        return counts

    def random_access(self) -> None:
        """Tell the kernel that reads will jump around (training batches): no read-ahead of whole runs of
        pages, which on a network file system turns each 2 KB window into megabytes fetched."""
        for part in self.parts:
            if getattr(part, "_mmap", None) is not None:  # (a stream in memory has no pages to advise on)
                part._mmap.madvise(mmap.MADV_RANDOM)

    @classmethod
    def of(cls, ids: np.ndarray, vocab_size: int) -> TokenStream:
        """A stream over ids in memory; its manifest holds only the vocabulary size."""
        stream = cls.__new__(cls)
        stream.manifest, stream.parts = {"vocab_size": vocab_size}, [ids]
        stream.starts = np.cumsum([0, len(ids)])
        stream._counts = None
        return stream

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


# --- whole wikis: one sharding job per bucket, then the manifest -------------------------

SPLITS = ("test", "valid", "train")  # corpus order: within a bucket each split is one run of articles


def shard_bucket(bucket: Path, tokens: Path, vocab_path: Path, out: Path, params: ShardsParams) -> dict:
    """Shard one bucket's articles (gather_bucket's articles.tsv and raw.txt, tokenize_bucket's lines)
    into `out`/<split>/ and write `out`/splits.json with each split's manifest entry and the seconds taken."""
    started = time.perf_counter()
    vocab = load_vocab(vocab_path)
    sizes: dict[str, list[int]] = {name: [] for name in SPLITS}
    for article in read_articles(Path(bucket) / "articles.tsv"):
        sizes[article.split].append(article.lines)
    present = [name for name in SPLITS if sizes[name]]
    with atomic_dir(out, "shard-bucket") as staging, open(tokens, encoding="utf-8") as token_fh, \
            open(Path(bucket) / "raw.txt", "rb") as raw:
        splits = {}
        for name in present:
            text = staging / name / "text.txt" if name == "test" else None
            docs = documents(token_fh, raw, sizes[name], last=name == present[-1])
            splits[name] = shard_split(docs, vocab, staging / name, name, params.shard_tokens, True, text)
        seconds = time.perf_counter() - started
        (staging / "splits.json").write_text(json.dumps({"seconds": seconds, "splits": splits}, indent=2) + "\n")
    return splits


def gather_shards(bucket_dirs: list[Path], vocab_path: Path, train_corpus: Path, valid_corpus: Path, test_corpus: Path,
                  out: Path, params: ShardsParams) -> dict:
    """The buckets' shards, in bucket order, as one shards folder: files hard-linked (copied across
    file systems) and numbered on, counts summed, test texts joined, then manifest.json (the corpus
    files are hashed into it, as make_shards does)."""
    started = time.perf_counter()
    corpora = {"test": Path(test_corpus), "valid": Path(valid_corpus), "train": Path(train_corpus)}
    with atomic_dir(out, "make-shards") as staging:
        splits = {name: {"documents": 0, "lines": 0, "tokens": 0, "bytes": 0, "unk_tokens": 0,
                         "missing_from_vocab": 0, "shards": []} for name in SPLITS}
        for name in SPLITS:
            (staging / name).mkdir()
        seconds = 0.0  # the buckets' sharding time, so tokens_per_second is a sharding job's rate
        vocab_size = len(load_vocab(vocab_path))
        counts = {name: np.zeros(vocab_size, dtype=np.int64) for name in SPLITS}
        with open(staging / "test" / "text.txt", "wb") as text:
            for bucket in map(Path, bucket_dirs):
                done = json.loads((bucket / "splits.json").read_text())
                seconds += done["seconds"]
                for name, part in done["splits"].items():
                    _merge_split(splits[name], part, bucket, staging, name)
                    counts[name] += np.load(bucket / part["counts"], allow_pickle=False)
                    if name == "test":
                        text.write((bucket / "test" / "text.txt").read_bytes())
        for name, split in splits.items():
            if split["tokens"] == 0:
                raise UserError(f"the {name} split is empty in every bucket; check the corpus stage's logs")
            split["counts"] = save_counts(staging / name, name, counts[name])
        manifest = write_manifest(staging, splits, vocab_path, corpora, "article", params,
                                  seconds + time.perf_counter() - started)
    return manifest


def _merge_split(total: dict, part: dict, bucket: Path, staging: Path, name: str) -> None:
    for key in ("documents", "lines", "tokens", "bytes", "unk_tokens", "missing_from_vocab"):
        total[key] += part[key]
    for shard in part["shards"]:
        target = f"{name}/{name}_{len(total['shards']):06d}.bin"
        link_or_copy(bucket / shard["file"], staging / target)
        total["shards"].append({**shard, "file": target})
