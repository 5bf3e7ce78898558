"""Stage 2: the corpus, built from the dump's listing with the patched expanda (expanda.py).

Every source takes the same scatter-gather jobs (below): the sample, a URL or a
path is a listing of one file. The patches make articles the unit
(patches/0005) and the vocabulary reproducible (0007); docs/pipeline.md says how.
"""

from __future__ import annotations

import bz2
import collections
import contextlib
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gpt2 import UserError
from gpt2.articles import HEADER, article_key, article_row, read_articles
from gpt2.audit import Audit, gather
from gpt2.dump import check_language
from gpt2.files import atomic_dir, atomic_path, file_digest
from gpt2.params import CorpusParams
from gpt2.patched_expanda import import_patched
from gpt2.vocab import BOS, EOS, PAD, UNK, document_tokens, is_bpe, load_tokenizer, train_bpe
from gpt2.wikixml import ExportError

ARTICLES = "corpus.articles.tsv"  # split, page id, title and lines of each article, in corpus order
ARTICLE_MARK = b"\x01"  # starts an article's header line in expanda's extraction output (patches/0005)


def _input_vocab(params: CorpusParams) -> Path:
    path = Path(params.input_vocab)
    if not path.is_file():
        raise UserError(f"corpus.input_vocab {params.input_vocab!r} is not a file: name an existing vocab.txt "
                        "(or tokenizer.json with corpus.tokenizer: bpe), or leave it empty to train one")
    if is_bpe(path) != (params.tokenizer == "bpe"):
        raise UserError(f"corpus.input_vocab {params.input_vocab!r} is not a {params.tokenizer} vocabulary: a "
                        "WordPiece one is a vocab.txt, a BPE one a tokenizer.json; set corpus.tokenizer to match")
    return path


# --- the corpus: one extraction job per file or piece, then gather jobs ------------------------
#
# extract_chunk  one piece of one multistream file -> expanda's Wikipedia extension -> its
#                articles scattered over `corpus.buckets` buckets by a seeded hash of the page id
# gather_bucket  one bucket from every piece, its articles sorted by that hash; the global rank
#                (from the pieces' counts) puts each article in test, valid or train
# train_vocab    expanda's WordPiece training on the head of the train articles
# tokenize_bucket expanda's tokenizer on one bucket
# gather_corpus  the buckets, in order, into results/corpus/ as build_corpus writes it
#
# The order of articles is their hash order, so it depends on the dump and corpus.seed only:
# not on parts, pieces, buckets or the order the jobs ran in. No job holds more than one
# article's text; gather_bucket holds one bucket's index (~1/buckets of the articles).

FOOTER = bz2.compress(b"</mediawiki>\n")  # closes a piece cut before the dump's last stream
PROGRESS_S = 10.0


def stream_offsets(index: Path, size: int) -> list[int]:
    """Start offsets of the bz2 streams holding pages, from a multistream index (offset:page id:title),
    checked: numeric offsets and ids, offsets increasing and inside the data file of `size` bytes."""
    offsets: list[int] = []
    with bz2.open(index, "rt", encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            match = re.match(r"(\d+):(\d+):", line)
            offset = int(match[1]) if match else -1
            problem = ("is not offset:page id:title" if not match else
                       f"offset {offset:,} is below the line before's" if offsets and offset < offsets[-1] else
                       f"offset {offset:,} is past the end of the {size:,}-byte data file" if offset >= size else "")
            if problem:
                raise UserError(f"{index} line {number} {problem}: a damaged index; fetch it again")
            if not offsets or offset != offsets[-1]:
                offsets.append(offset)
    if not offsets:
        raise UserError(f"{index}: the index lists no streams; fetch it again")
    return offsets


def plan_pieces(listing: Path, pieces: int) -> list[tuple[str, str, int, int]]:
    """(file, its index, piece, pieces) of each extraction job: every file of the listing cut into
    ceil(pieces / files) pieces (one where the dump publishes no index for it)."""
    parts = json.loads(Path(listing).read_text())["parts"]
    per_file = math.ceil(pieces / len(parts))
    plan = []
    for part in parts:
        pieces = per_file if part["index"] else 1
        plan += [(part["file"], part["index"], k, pieces) for k in range(pieces)]
    return plan


def piece_ranges(offsets: list[int], size: int, piece: int, pieces: int) -> list[tuple[int, int]]:
    """Byte ranges of piece `piece` of `pieces`: the header stream, then a contiguous run of page streams."""
    lo, hi = piece * len(offsets) // pieces, (piece + 1) * len(offsets) // pieces
    end = offsets[hi] if hi < len(offsets) else size  # the last piece keeps the closing stream
    return [(0, offsets[0])] + ([(offsets[lo], end)] if lo < hi else [])


class Segments(io.RawIOBase):
    """Byte ranges of a file, then `tail`, read as one stream; logs MB of bz2 read per second."""

    def __init__(self, path: Path, ranges: list[tuple[int, int]], tail: bytes):
        super().__init__()
        self.fh = open(path, "rb")
        self.parts = [(start, end - start) for start, end in ranges]
        self.tail = tail
        self.label, self.total = Path(path).name, sum(n for _, n in self.parts) + len(tail)
        self.done, self.started, self.logged = 0, time.perf_counter(), time.perf_counter()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.parts and self.parts[0][1] == 0:
            self.parts.pop(0)
        if self.parts:
            start, left = self.parts[0]
            self.fh.seek(start)
            data = self.fh.read(min(len(buffer), left))
            self.parts[0] = (start + len(data), left - len(data))
        else:
            data, self.tail = self.tail[:len(buffer)], self.tail[len(buffer):]
        buffer[:len(data)] = data
        self._progress(len(data))
        return len(data)

    def _progress(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.logged >= PROGRESS_S:
            self.logged = now
            print(f"{self.label}: {self.done / 1e6:,.1f} of {self.total / 1e6:,.1f} MB of bz2 read, "
                  f"{self.done / 1e6 / (now - self.started):.2f} MB/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.fh.close()
        super().close()


def _dump_language(dump: Path, header_end: int | None) -> str:
    """The dump's xml:lang from its first stream (the <mediawiki> and <siteinfo> header)."""
    with open(dump, "rb") as fh:
        head = bz2.BZ2Decompressor().decompress(fh.read(header_end or 1 << 20), max_length=1 << 16)
    match = re.search(rb'<mediawiki[^>]*xml:lang="([^"]+)"', head)
    if match is None:
        raise UserError(f"{dump}: no <mediawiki xml:lang=...> header; is this a pages-articles dump?")
    lang = match[1].decode()
    check_language(lang, dump)
    return lang


def extract_chunk(dump: Path, index: Path | None, piece: int, pieces: int, expanda: Path, out: Path,
                  params: CorpusParams) -> dict:
    """Extract piece `piece` of `pieces` of one dump file and scatter its articles into bucket files in `out`."""
    import_patched(expanda)
    from expanda.extension import Extension

    if pieces > 1 and index is None:
        raise UserError(f"{dump}: cutting it into {pieces} pieces needs its multistream index file")
    size = Path(dump).stat().st_size
    ranges = piece_ranges(stream_offsets(index, size), size, piece, pieces) if index else [(0, size)]
    lang = _dump_language(dump, ranges[0][1] if index else None)
    started = time.perf_counter()
    with atomic_dir(out, "extract-chunk") as staging:
        text = staging / "extracted.txt"
        (staging / "tmp").mkdir()
        reader = Segments(dump, ranges, FOOTER if ranges[-1][1] < size else b"")
        try:
            Extension("expanda.ext.wikipedia").call(reader, str(text), str(staging / "tmp"), _wiki_args(params))
        except EOFError:
            raise UserError(f"{dump}: the bz2 data ends early (truncated file); fetch it again") from None
        except (OSError, ExportError) as exc:
            raise UserError(f"{dump} piece {piece}: not a readable MediaWiki bz2 export ({exc})") from None
        finally:
            reader.close()
        audit = Audit.load(f"{text}.audit.json")
        stats = scatter(text, staging, params, audit)
        audit.save(staging / "audit.json")
        text.unlink()
        Path(f"{text}.audit.json").unlink()
        shutil.rmtree(staging / "tmp")
        seconds = time.perf_counter() - started
        stats.update(file=Path(dump).name, piece=piece, pieces=pieces, lang=lang, bz2_bytes=reader.total,
                     seconds=round(seconds, 3))
        (staging / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(f"{Path(dump).name} piece {piece + 1}/{pieces}: {stats['articles']:,} articles, "
          f"{stats['sentences']:,} sentences in {seconds:.1f}s ({stats['articles'] / seconds:,.1f} articles/s, "
          f"{reader.total / 1e6 / seconds:.2f} MB of bz2/s)", file=sys.stderr)
    return stats


def _wiki_args(params: CorpusParams) -> dict[str, str]:
    """The [expanda.ext.wikipedia] options, as expanda.cfg would give them."""
    return {"num-cores": str(params.threads), "min-length": str(params.min_length),
            "max-length": str(params.max_length), "split-sent": str(params.split_sent).lower(), "unit": "article",
            "max-page-bytes": str(params.max_page_bytes), "seed": str(params.seed), "list-pages": params.list_pages}


def _header(line: bytes) -> tuple[int, str]:
    """(page id, title) of an article's header line: `<ARTICLE_MARK><page id>\t<title>`."""
    page_id, title = line[len(ARTICLE_MARK):].decode("utf-8").rstrip("\n").split("\t", 1)
    return int(page_id), title


def _articles(path: Path):
    """(page id, title, lines) of each article in an extension output / bucket file, lines as bytes."""
    page = None
    with open(path, "rb") as fh:
        for line in fh:
            if line.startswith(ARTICLE_MARK):
                if page:
                    yield page
                page = (*_header(line), [])
            elif page and line.strip():
                page[2].append(line)
    if page:
        yield page


SCATTER_BUFFER = 32 << 20  # bytes of articles held before they are appended to their bucket files


def scatter(text: Path, out: Path, params: CorpusParams, audit: Audit) -> dict:
    """Append each article with sentences to bucket file `<bucket>.txt` in `out`; return the counts
    (and count the articles kept, and those left without a sentence, into `audit`).

    Articles are buffered per bucket and appended a bucket file at a time, so one file is open at
    once whatever corpus.buckets is (thousands of open buckets would pass the open-files limit)."""
    buffers = [bytearray() for _ in range(params.buckets)]
    counts = [0] * params.buckets
    articles = sentences = held = 0
    for b in range(params.buckets):
        (out / f"{b}.txt").touch()
    for page_id, title, lines in _articles(text):
        if not lines:
            audit.add("pages dropped", "empty after cleaning")
            continue
        audit.add("pages", "articles kept")
        b = article_key(params.seed, page_id) * params.buckets >> 64
        block = ARTICLE_MARK + f"{page_id}\t{title}\n".encode("utf-8") + b"".join(lines)
        buffers[b] += block
        counts[b] += 1
        articles, sentences, held = articles + 1, sentences + len(lines), held + len(block)
        if held >= SCATTER_BUFFER:
            _flush(buffers, out)
            held = 0
    _flush(buffers, out)
    return {"articles": articles, "sentences": sentences, "bucket_articles": counts}


def _flush(buffers: list[bytearray], out: Path) -> None:
    for b, buffer in enumerate(buffers):
        if buffer:
            with open(out / f"{b}.txt", "ab") as fh:
                fh.write(buffer)
            buffer.clear()


def _bucket_ranks(extracted: list[Path], bucket: int) -> tuple[int, int]:
    """(articles in all buckets, rank of this bucket's first article), from the pieces' counts."""
    counts = [json.loads((Path(c) / "stats.json").read_text())["bucket_articles"] for c in extracted]
    per_bucket = [sum(column) for column in zip(*counts)]
    return sum(per_bucket), sum(per_bucket[:bucket])


def split_sizes(articles: int, params: CorpusParams) -> tuple[int, int]:
    """Test and validation articles: the first ceil(N x split_ratio), then ceil(N x valid_ratio)."""
    if articles == 0:
        raise UserError("the dump gave no article with a sentence between corpus.min_length and corpus.max_length "
                        "(the extraction logs count the pages skipped as over corpus.max_page_bytes)")
    test, valid = math.ceil(articles * params.split_ratio), math.ceil(articles * params.valid_ratio)
    if test + valid >= articles:
        raise UserError(f"{articles} articles leave none for training after {test} test and {valid} "
                        "validation ones: lower corpus.split_ratio / corpus.valid_ratio or use more parts")
    return test, valid


class OpenFiles:
    """Read handles of `paths`, at most `limit` open at once (the least recently used is closed):
    a gather reads every piece's bucket file, and there may be thousands of pieces."""

    def __init__(self, paths: list[Path], limit: int = 256):
        self.paths, self.limit = paths, limit
        self.open: collections.OrderedDict[int, io.BufferedReader] = collections.OrderedDict()

    def get(self, number: int) -> io.BufferedReader:
        if number in self.open:
            self.open.move_to_end(number)
        else:
            if len(self.open) >= self.limit:
                self.open.popitem(last=False)[1].close()
            self.open[number] = open(self.paths[number], "rb")
        return self.open[number]

    def __enter__(self) -> "OpenFiles":
        return self

    def __exit__(self, *exc) -> None:
        for fh in self.open.values():
            fh.close()


def gather_bucket(extracted: list[Path], bucket: int, out: Path, params: CorpusParams) -> int:
    """One bucket from every piece, in hash order, into `out`/{raw.txt, articles.tsv}; return its articles."""
    total, rank = _bucket_ranks(extracted, bucket)
    n_test, n_valid = split_sizes(total, params)
    index = []  # (key, page id, title, file, offset, lines): the bucket's index, not its text
    files = [Path(c) / f"{bucket}.txt" for c in extracted]
    for number, path in enumerate(files):
        with open(path, "rb") as fh:
            for line in iter(fh.readline, b""):
                if line.startswith(ARTICLE_MARK):
                    page_id, title = _header(line)
                    index.append([article_key(params.seed, page_id), page_id, title, number, fh.tell(), 0])
                else:
                    index[-1][5] += 1
    index.sort()
    with atomic_dir(out, "gather-bucket") as staging, open(staging / "raw.txt", "wb") as raw, \
            open(staging / "articles.tsv", "w", encoding="utf-8") as tsv:
        with OpenFiles(files) as handles:
            for _, page_id, title, number, offset, lines in index:
                split = "test" if rank < n_test else "valid" if rank < n_test + n_valid else "train"
                tsv.write(article_row(split, page_id, title, lines))
                fh = handles.get(number)
                fh.seek(offset)
                raw.writelines(fh.readline() for _ in range(lines))
                rank += 1
    print(f"bucket {bucket}: {len(index):,} articles", file=sys.stderr)
    return len(index)


def _train_head(buckets: list[Path], dest: Path, limit: int, joined: bool = False) -> int:
    """Copy the train articles' lines, in corpus order, to `dest` up to `limit` bytes; return the bytes.
    `joined`: an article a line, its lines joined by spaces (its text as the BPE encodes it)."""
    written = 0
    with open(dest, "wb") as out:
        for bucket in buckets:
            with open(Path(bucket) / "raw.txt", "rb") as raw:
                for article in read_articles(Path(bucket) / "articles.tsv"):
                    lines = [raw.readline() for _ in range(article.lines)]
                    block = b" ".join(line.rstrip(b"\n") for line in lines) + b"\n" if joined else b"".join(lines)
                    if article.split == "train":
                        out.write(block)
                        written += len(block)
                    if written >= limit:
                        return written
    return written


def train_vocab(bucket_dirs: list[Path], expanda: Path, out: Path, params: CorpusParams) -> None:
    """The vocabulary (corpus.tokenizer) on the first corpus.subset_size bytes of train articles:
    WordPiece by expanda's trainer (patched), or a byte-level BPE by `tokenizers`."""
    with atomic_path(out) as tmp:
        if params.input_vocab:
            shutil.copyfile(_input_vocab(params), tmp)
            return
        work = Path(tempfile.mkdtemp(prefix=".vocab.", dir=Path(out).parent))
        try:
            head = work / "head.txt"
            bpe = params.tokenizer == "bpe"
            size = _train_head(bucket_dirs, head, params.subset_size, joined=bpe)
            print(f"training {params.tokenizer} on {size / 1e6:,.1f} MB of train articles", file=sys.stderr)
            if bpe:
                train_bpe(head, work / "tokenizer.json", params.vocab_size)
                os.replace(work / "tokenizer.json", tmp)
                return
            import_patched(expanda)
            from expanda.tokenization import train_tokenizer

            train_tokenizer(str(head), str(work / "vocab.txt"), str(work), params.subset_size, params.vocab_size,
                            params.limit_alphabet, UNK, [BOS, EOS, PAD])
            os.replace(work / "vocab.txt", tmp)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def tokenize_bucket(bucket: Path, vocab: Path, expanda: Path, out: Path) -> None:
    """One bucket's raw.txt as token lines: expanda's WordPiece tokenizer, or the BPE (a tokenizer.json),
    which encodes each article's text whole (vocab.document_tokens)."""
    with atomic_path(out) as tmp:
        if is_bpe(vocab):
            _tokenize_articles(Path(bucket), load_tokenizer(vocab), tmp)
            return
        import_patched(expanda)
        from expanda.tokenization import tokenize_corpus

        tokenize_corpus(str(Path(bucket) / "raw.txt"), str(tmp), str(vocab), UNK, [BOS, EOS, PAD])


def _tokenize_articles(bucket: Path, tokenizer, out: Path) -> None:
    """Each article's lines as space-separated tokens, a line for a line (byte-level tokens hold no space)."""
    with open(bucket / "raw.txt", encoding="utf-8") as raw, open(out, "w", encoding="utf-8") as fh:
        for article in read_articles(bucket / "articles.tsv"):
            lines = [raw.readline().rstrip("\n") for _ in range(article.lines)]
            fh.writelines(" ".join(tokens) + "\n" for tokens in document_tokens(tokenizer, lines))


def gather_corpus(listing: Path, extracted: list[Path], bucket_dirs: list[Path], tokens: list[Path], out: Path,
                  info: Path) -> dict:
    """The buckets in order into `out`'s corpus files (not vocab.txt) and the dump's sidecar `info`."""
    out = Path(out)
    names = ("corpus.raw.txt", "corpus.test.txt", "corpus.valid.txt", "corpus.train.txt", ARTICLES)
    counts = dict.fromkeys(names, 0)
    with contextlib.ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_path(out / name)) for name in names}
        files = {name: stack.enter_context(open(path, "wb")) for name, path in tmp.items()}
        files[ARTICLES].write(HEADER)
        for bucket, token_file in zip(bucket_dirs, tokens):
            _append_bucket(Path(bucket), Path(token_file), files, counts)
    stats = [json.loads((Path(c) / "stats.json").read_text()) for c in extracted]
    meta = json.loads(Path(listing).read_text())
    files = {name: dict(meta["files"][name]) for name in sorted({s["file"] for s in stats})}
    for name, sums in files.items():  # a one-file listing learns its file's sums only once it is fetched
        if not sums["sha1"]:
            sums["sha1"] = file_digest(Path(listing).parent / name, "sha1")
    summary = {"source": meta["source"], "wiki": meta["wiki"] or meta["name"], "date": meta["date"],
               "lang": stats[0]["lang"], "articles": counts[ARTICLES], "pieces": len(stats), "files": files}
    with atomic_path(info) as tmp_info:
        tmp_info.write_text(json.dumps(summary, indent=2) + "\n")
    with atomic_path(out / "audit.json") as tmp_audit:
        audit = gather([Path(c) / "audit.json" for c in extracted]).summary()
        tmp_audit.write_text(json.dumps(audit, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"corpus: {counts}", file=sys.stderr)
    return counts


def _append_bucket(bucket: Path, token_file: Path, files: dict, counts: dict) -> None:
    with open(bucket / "raw.txt", "rb") as raw, open(token_file, "rb") as tokens:
        for article in read_articles(bucket / "articles.tsv"):
            n = article.lines
            files["corpus.raw.txt"].writelines(raw.readline() for _ in range(n))
            files[f"corpus.{article.split}.txt"].writelines(tokens.readline() for _ in range(n))
            files[ARTICLES].write(article.row)
            counts[f"corpus.{article.split}.txt"] += n
            counts["corpus.raw.txt"] += n
            counts[ARTICLES] += 1
