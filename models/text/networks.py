"""The text network: token ids -> the mean of token and hashed n-gram embeddings -> an MLP (fastText's bag of
n-grams with a hidden layer). Input int64 (batch, length) token ids, right-padded with `pad_id`; output logits.
Exports to ONNX with dynamic batch and length axes (Gather, Mod, ReduceSum only)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

PRIME = 1_000_003  # n-gram hash: ((id_1 * P + id_2) * P + id_3) mod buckets; under 2**63 for 3-grams


class TextSpec(BaseModel):
    """What `build` needs to rebuild the network: stored in every text model file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: Literal["ngram_mlp", "encoder"] = "ngram_mlp"
    vocab_size: int
    n_classes: int
    embed_dim: int  # the encoder's hidden size for an encoder
    hidden: int  # 0 for an encoder: a linear head
    ngrams: int = 1
    buckets: int = 1024
    dropout: float
    pad_id: int = 0
    encoder_config: dict[str, Any] | None = None  # a transformers config (architecture "encoder")

    def build(self) -> nn.Sequential:
        if self.architecture == "encoder":
            from models.text.encoder import EncoderBody

            return nn.Sequential(EncoderBody(self.encoder_config or {}, self.pad_id), Head(self))
        return nn.Sequential(NgramBag(self), Head(self))


class NgramBag(nn.Module):
    def __init__(self, spec: TextSpec) -> None:
        super().__init__()
        self.pad_id, self.ngrams, self.buckets = spec.pad_id, spec.ngrams, spec.buckets
        self.tokens = nn.Embedding(spec.vocab_size, spec.embed_dim, padding_idx=spec.pad_id)
        self.grams = nn.Embedding(spec.buckets, spec.embed_dim) if spec.ngrams > 1 else None
        nn.init.normal_(self.tokens.weight, std=0.1)
        if self.grams is not None:
            nn.init.normal_(self.grams.weight, std=0.1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).to(torch.float32)
        total = (self.tokens(ids) * mask.unsqueeze(-1)).sum(1)
        count = mask.sum(1)
        length = ids.shape[1]
        for n in range(2, self.ngrams + 1):
            if self.grams is None:
                break
            h = ids[:, : length - n + 1] if length >= n else ids[:, :0]
            m = mask[:, : h.shape[1]]
            for k in range(1, n):
                h = h * PRIME + ids[:, k : k + h.shape[1]]
                m = m * mask[:, k : k + h.shape[1]]
            h = torch.remainder(h + n, self.buckets)
            total = total + (self.grams(h) * m.unsqueeze(-1)).sum(1)
            count = count + m.sum(1)
        return total / count.clamp(min=1.0).unsqueeze(-1)


class Head(nn.Module):
    """The MLP on the averaged embeddings; `head[-1]` is the classifier layer (rows = classes)."""

    def __init__(self, spec: TextSpec) -> None:
        super().__init__()
        if spec.hidden:
            layers = [nn.LayerNorm(spec.embed_dim), nn.Dropout(spec.dropout), nn.Linear(spec.embed_dim, spec.hidden)]
            layers += [nn.GELU(), nn.Dropout(spec.dropout), nn.Linear(spec.hidden, spec.n_classes)]
        else:
            layers = [nn.LayerNorm(spec.embed_dim), nn.Dropout(spec.dropout), nn.Linear(spec.embed_dim, spec.n_classes)]
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)
