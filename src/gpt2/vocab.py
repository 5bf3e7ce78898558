"""The vocabulary expanda writes: vocab.txt, its special tokens, and the tokenizer around it.

expanda puts `<unk> <s> </s> <pad>` first in vocab.txt, so their ids are
0..3 and every other token's id is its line number.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gpt2 import UserError

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIALS = (UNK, BOS, EOS, PAD)
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(len(SPECIALS))
MAX_VOCAB = np.iinfo(np.uint16).max + 1  # shards store ids as uint16


def load_vocab(path: str | os.PathLike) -> dict[str, int]:
    """token -> id from vocab.txt; duplicates, missing specials and > uint16 sizes are errors."""
    tokens = Path(path).read_text(encoding="utf-8").splitlines()
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        dup = next(t for i, t in enumerate(tokens) if vocab[t] != i)
        raise UserError(f"{path}: token {dup!r} appears more than once; rebuild the vocabulary")
    if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
        raise UserError(f"{path}: must start with {' '.join(SPECIALS)} (found {' '.join(tokens[:4])})")
    if len(tokens) > MAX_VOCAB:
        raise UserError(f"{path}: {len(tokens)} tokens do not fit uint16 shards; lower corpus.vocab_size")
    return vocab


def load_tokenizer(vocab_path: str | os.PathLike):
    """The tokenizer expanda built the corpus with: BERT normalizer and pre-tokenizer, `##` WordPiece."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    load_vocab(vocab_path)  # the same checks as the shards get
    tokenizer = Tokenizer(models.WordPiece.from_file(str(vocab_path), unk_token=UNK))
    tokenizer.normalizer = BertNormalizer(strip_accents=False)
    tokenizer.pre_tokenizer = BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens(list(SPECIALS))
    return tokenizer
