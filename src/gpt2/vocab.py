"""The vocabulary and the tokenizer around it: expanda's WordPiece (vocab.txt) or a byte-level BPE (tokenizer.json).

WordPiece (corpus.tokenizer: wordpiece): expanda puts `<unk> <s> </s> <pad>` first in vocab.txt,
so their ids are 0..3 and every other token's id is its line number; BERT's normaliser lowercases.
BPE (corpus.tokenizer: bpe): GPT-2's scheme, trained by `tokenizers` and saved in its own JSON:
cased, byte-level (no unknown token, every string round-trips), one special token
`<|endoftext|>` (id 0) that ends each document as `</s>` does for WordPiece.

A document's lines are encoded as their text joined by spaces (document_tokens): the first line as
it is, every next one after a space. The byte-level BPE encodes that space (`Ġ`), so a document's
ids decode to exactly its text; WordPiece ignores it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gpt2 import UserError

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIALS = (UNK, BOS, EOS, PAD)  # WordPiece's, ids 0..3
ENDOFTEXT = "<|endoftext|>"  # BPE's one special token, id 0
MAX_VOCAB = np.iinfo(np.uint16).max + 1  # shards store ids as uint16


def is_bpe(path: str | os.PathLike) -> bool:
    """A BPE tokenizer.json (else a WordPiece vocab.txt)."""
    return Path(path).suffix == ".json"


def load_vocab(path: str | os.PathLike) -> dict[str, int]:
    """token -> id of a vocab.txt or tokenizer.json; duplicates, missing specials and > uint16 sizes are errors."""
    if is_bpe(path):
        vocab = load_tokenizer(path).get_vocab(with_added_tokens=True)
    else:
        tokens = Path(path).read_text(encoding="utf-8").splitlines()
        vocab = {token: i for i, token in enumerate(tokens)}
        if len(vocab) != len(tokens):
            dup = next(t for i, t in enumerate(tokens) if vocab[t] != i)
            raise UserError(f"{path}: token {dup!r} appears more than once; rebuild the vocabulary")
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise UserError(f"{path}: must start with {' '.join(SPECIALS)} (found {' '.join(tokens[:4])})")
    if len(vocab) > MAX_VOCAB:
        raise UserError(f"{path}: {len(vocab)} tokens do not fit uint16 shards; lower corpus.vocab_size")
    return vocab


def special_ids(vocab: dict[str, int]) -> dict[str, int]:
    """The special tokens the vocabulary has, by name."""
    return {token: vocab[token] for token in (*SPECIALS, ENDOFTEXT) if token in vocab}


def eos_id(vocab: dict[str, int]) -> int:
    """The id that ends a document: `</s>` (WordPiece) or `<|endoftext|>` (BPE)."""
    return vocab[EOS] if EOS in vocab else vocab[ENDOFTEXT]


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer the corpus was built with: BPE from its tokenizer.json, or WordPiece around vocab.txt."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    if is_bpe(path):
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own Exception type for a bad file
            raise UserError(f"{path}: not a tokenizers JSON file ({exc}); rebuild the vocabulary") from None
        if tokenizer.token_to_id(ENDOFTEXT) is None:
            raise UserError(f"{path}: it has no {ENDOFTEXT} token; rebuild the vocabulary")
        return tokenizer
    load_vocab(path)  # the same checks as the shards get
    tokenizer = Tokenizer(models.WordPiece.from_file(str(path), unk_token=UNK))
    tokenizer.normalizer = BertNormalizer(strip_accents=False)
    tokenizer.pre_tokenizer = BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens(list(SPECIALS))
    return tokenizer


def tokenizer_eos_id(tokenizer) -> int:
    return eos_id(tokenizer.get_vocab(with_added_tokens=True))


def document_tokens(tokenizer, lines: list[str]) -> list[list[str]]:
    """Each line's tokens, the document's text being its lines joined by spaces (module docstring)."""
    return [e.tokens for e in tokenizer.encode_batch([line if k == 0 else " " + line for k, line in enumerate(lines)])]


def train_bpe(text: Path, out: Path, vocab_size: int) -> None:
    """A byte-level BPE of `vocab_size` entries (with <|endoftext|>) trained on the lines of `text`, as JSON.

    GPT-2's pre-tokenizer split (its regex, no prefix space), byte-level decoder, no normaliser. The
    trainer is deterministic: the same text gives the same file (tested across processes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[ENDOFTEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train([str(text)], trainer)
    tokenizer.save(str(out))
