"""The weights-only model file every stage after train loads: tensors and plain data, no pickled code.

    {"format": "lab2prod-model/1", "spec": ModelSpec (build_network's arguments),
     "info": classes, input shape, lineage, variant, "state_dict": the weights}

`torch.load(..., weights_only=True)` reads it safely; `load_model_file` validates the records and
rebuilds the network, with the channel counts of a structurally pruned network read back from its tensors.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from lab2prod.core.errors import DataError
from lab2prod.core.files import atomic_file
from models.nets.networks import ModelSpec

FORMAT = "lab2prod-model/1"


class Lineage(BaseModel):
    """Where a model came from: the data, the settings and the code that made it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset_hash: str  # meta.json's content hash of the prepared images and labels
    train_inputs_hash: str  # the exact training and validation files
    params_hash: str  # the train settings
    git_commit: str  # the code (suffixed -dirty when it had uncommitted changes)
    # the initial weights: "none" (random), "timm:<hub id>", "champion:<version>", or a file path / URL
    weights_source: str = "none"
    weights_sha256: str | None = None  # of that weights file (None: random initial weights)

    @classmethod
    def of(cls, dataset: str, inputs: str, params: str, weights: str, weights_sha: str | None, commit: str) -> Lineage:
        return cls(
            dataset_hash=dataset,
            train_inputs_hash=inputs,
            params_hash=params,
            git_commit=commit,
            weights_source=weights,
            weights_sha256=weights_sha,
        )


class ModelInfo(BaseModel):
    """Everything about a model but its weights: how to build it, what it predicts, where it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: ModelSpec
    classes: list[str]
    image_shape: list[int] = Field(min_length=3, max_length=3)  # H, W, C
    input: str = "float32 NCHW, pixel / 255 (normalisation is inside the network)"
    lineage: Lineage
    best_val_loss: float | None = None
    epochs_trained: int | None = None
    variant: str = "fp32"


def save_model_file(path: Path | str, net: nn.Module, info: ModelInfo) -> None:
    """Weights-only model file: tensors plus plain data, loadable with `torch.load(weights_only=True)`."""
    payload = {
        "format": FORMAT,
        "spec": info.spec.model_dump(),
        "info": info.model_dump(exclude={"spec"}),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},  # NCHW order
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def fit_shapes_to(net: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Resize conv / batch-norm / linear layers to the shapes in `state_dict`.

    A structurally pruned network has fewer channels than its architecture's defaults; its model
    file stays weights-only (no pickled modules) because the shapes are read back from the tensors.
    """
    for name, module in net.named_modules():
        weight = state_dict.get(f"{name}.weight" if name else "weight")
        if weight is None:
            continue
        if isinstance(module, nn.Conv2d):
            if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
                module.groups = weight.shape[0]  # depthwise (MobileNet, EfficientNet): pruned with its input
            module.out_channels, module.in_channels = weight.shape[0], weight.shape[1] * module.groups
        elif isinstance(module, nn.BatchNorm2d):
            module.num_features = weight.shape[0]
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
        else:
            continue
        for attr in ("weight", "bias"):
            if getattr(module, attr, None) is not None:
                setattr(module, attr, nn.Parameter(torch.empty_like(state_dict[f"{name}.{attr}"])))
        for buf in ("running_mean", "running_var"):
            if getattr(module, buf, None) is not None:
                setattr(module, buf, torch.empty_like(state_dict[f"{name}.{buf}"]))
    return net


def load_model_file(path: Path | str) -> tuple[nn.Sequential, ModelInfo]:
    """Rebuild the network from a model file (safe: weights_only=True). Returns (net in eval mode, info)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # pickled code, not tensors and plain data: never run
        first = str(exc).strip().splitlines()[0][:200]
        raise DataError(f"{path}: refused: it holds pickled objects, not weights only ({first})") from None
    try:
        info = ModelInfo.model_validate({**payload["info"], "spec": payload["spec"]})
    except (KeyError, TypeError, ValidationError) as exc:
        raise DataError(f"{path}: not a lab2prod model file ({FORMAT}): {exc}") from None
    net = fit_shapes_to(info.spec.build(), payload["state_dict"])
    net.load_state_dict(payload["state_dict"])
    return net.eval(), info
