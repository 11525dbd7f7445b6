"""The text model file: weights-only, like the image one (models/nets/model_file.py), with the tokenizer inside.

{"format": "lab2prod-text-model/1", "spec": TextSpec, "info": classes, lineage, tokenizer (tokenizer.json's
 text), max_length, ..., "state_dict": the weights}
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from lab2prod.core.errors import DataError
from lab2prod.core.files import atomic_file
from models.nets.model_file import Lineage
from models.text.networks import TextSpec

FORMAT = "lab2prod-text-model/1"


class TextModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: TextSpec
    classes: list[str]
    tokenizer: str  # tokenizer.json's text (the `tokenizers` library's format)
    max_length: int
    input: str = "int64 token ids (batch, length), right-padded with the pad id"
    lineage: Lineage
    best_val_loss: float | None = None
    epochs_trained: int | None = None
    variant: str = "fp32"


def save_text_model(path: Path | str, net: nn.Module, info: TextModelInfo) -> None:
    payload = {
        "format": FORMAT,
        "spec": info.spec.model_dump(),
        "info": info.model_dump(exclude={"spec"}),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def is_text_model(path: Path | str) -> bool:
    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("format") == FORMAT
    except (pickle.UnpicklingError, OSError, RuntimeError, AttributeError):
        return False


def load_text_model(path: Path | str) -> tuple[nn.Sequential, TextModelInfo]:
    """The network in eval mode and its info (weights_only=True: no pickled code is run)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        info = TextModelInfo.model_validate({**payload["info"], "spec": payload["spec"]})
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: refused: it holds pickled objects, not weights only ({exc})") from None
    except (KeyError, TypeError, ValidationError) as exc:
        raise DataError(f"{path}: not a lab2prod text model file ({FORMAT}): {exc}") from None
    net = info.spec.build()
    net.load_state_dict(payload["state_dict"])
    return net.eval(), info
