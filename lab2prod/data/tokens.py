"""Texts to token ids with the `tokenizers` library (Rust; no torch): the tokenizer a text model is trained with
is stored in its model file and in its ONNX file's metadata, so predict and serve cut and pad a text exactly as
training did. Batches are padded to their longest text (at most `max_length` tokens), never to a fixed length."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

PAD, UNK = "[PAD]", "[UNK]"
PAD_WASTE = 0.25  # the share of padding a length group may add to its real tokens (length_groups)


def train_tokenizer(texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> Tokenizer:
    """A WordPiece vocabulary learned from `texts` (BERT's normaliser and pre-tokenizer; [PAD] = 0, [UNK] = 1)."""
    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


class TextEncoder:
    """A serialised tokenizer (tokenizer.json's text) as a callable: texts -> int64 token ids (batch, length),
    right-padded with the pad id to the batch's longest text, cut at `max_length`."""

    def __init__(self, tokenizer_json: str, max_length: int) -> None:
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.max_length = max_length
        pad = self.tokenizer.token_to_id(PAD)
        self.pad_id = 0 if pad is None else pad
        self.unk_id = self.tokenizer.token_to_id(UNK)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)

    def ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, unpadded."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def pad(self, ids: list[list[int]]) -> np.ndarray:
        out = np.full((len(ids), max(1, max((len(i) for i in ids), default=1))), self.pad_id, np.int64)
        for row, seq in zip(out, ids, strict=True):
            row[: len(seq)] = seq
        return out

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.pad(self.ids(texts))

    def unknown_rate(self, ids: list[list[int]]) -> float:
        """The share of tokens that are [UNK] (the drift monitor's out-of-vocabulary rate)."""
        total = sum(len(i) for i in ids)
        return sum(t == self.unk_id for i in ids for t in i) / total if total else 0.0

    def token_stats(self, ids: list[list[int]]) -> list[dict[str, float]]:
        """Per text: its token count (after the cut at max_length) and its share of [UNK] tokens, what the
        prediction log records and the drift reference holds (lab2prod/monitor/drift.py)."""
        return [{"tokens": len(i), "unknown_rate": round(self.unknown_rate([i]), 6)} for i in ids]


def length_groups(lengths: list[int], max_waste: float = PAD_WASTE) -> list[np.ndarray]:
    """Indices of texts cut into groups of similar token length, each padded to its own longest: in order of
    length, a group takes the next text while its padded cells (texts x longest) stay within (1 + max_waste)
    times its real tokens, so no group (and no batch) pads more than that share (a text counts at least one
    token: an empty one is padded to one)."""
    order = np.argsort(np.maximum(1, np.asarray(lengths, dtype=np.int64)), kind="stable")
    groups: list[list[int]] = []
    real = 0
    for i in order.tolist():
        n = max(1, lengths[i])
        if groups and (len(groups[-1]) + 1) * n <= (1 + max_waste) * (real + n):
            groups[-1].append(i)
            real += n
        else:
            groups.append([i])
            real = n
    return [np.asarray(g, dtype=np.int64) for g in groups]
