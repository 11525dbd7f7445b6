"""The weights-only model file every stage after train loads: tensors and plain data, no pickled code.

    {"format": "lab2prod-model/1", "spec": build_network's arguments, "info": classes, input shape,
     lineage, "state_dict": the weights}

`torch.load(..., weights_only=True)` reads it safely; `load_model_file` rebuilds the network, with the
channel counts of a structurally pruned network read back from its tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lab2prod.files import atomic_file
from models.networks import build_network


def save_model_file(path: Path | str, net: nn.Module, spec: dict[str, Any], info: dict[str, Any]) -> None:
    """Weights-only model file: tensors plus plain data, loadable with `torch.load(weights_only=True)`.

    `spec` holds build_network's arguments; `info` classes, input shape and lineage.
    """
    payload = {
        "format": "lab2prod-model/1",
        "spec": spec,
        "info": info,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
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


def load_model_file(path: Path | str) -> tuple[nn.Sequential, dict[str, Any]]:
    """Rebuild the network from a model file (safe: weights_only=True). Returns (net in eval mode, info)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    net = fit_shapes_to(build_network(**payload["spec"]), payload["state_dict"])
    net.load_state_dict(payload["state_dict"])
    return net.eval(), payload["info"]
