"""Image classification networks, built by name from a spec (the arguments of `build_network`).

Two built-in from-scratch networks (`small_cnn`, `resnet`) and any timm model by its name
(`mobilenetv3_small_100`, `efficientnet_b0`, `resnet18`, `convnext_atto`, ...). Every network takes
float32 NCHW pixels in [0, 1] and starts with its own input layer (resize to the backbone's input size
where it has one, then normalisation), so every exported ONNX file needs nothing beyond `pixel / 255`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from lab2prod.core.errors import DataError
from lab2prod.core.settings import ARCHITECTURE_CHECKS, BUILTIN_ARCHITECTURES


class ModelSpec(BaseModel):
    """What `build_network` needs to rebuild a network: stored in every model file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str
    in_channels: int
    n_classes: int
    width: int
    dropout: float
    mean: list[float]  # per-channel normalisation statistics (the data's, or a pretrained backbone's), pixel / 255
    std: list[float]
    input_size: int | None = None  # the network resizes its input to this square size first (None: as given)
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"  # how it resizes

    def build(self, weights_file: Path | None = None) -> nn.Sequential:
        """The network; with `weights_file`, a timm backbone's pretrained weights loaded through timm
        (first conv adapted to `in_channels`, classifier re-sized to `n_classes`)."""
        return build_network(**self.model_dump(), weights_file=weights_file)

    @property
    def is_timm(self) -> bool:
        return self.architecture not in ARCHITECTURES


class Normalize(nn.Module):
    """The network's input layer: optionally resize to `size` x `size`, then (x - mean) / std per channel.

    The statistics are buffers, so they travel with the weights; the resize is part of the graph, so
    the ONNX file takes images at the ingested size whatever size the backbone wants.
    """

    def __init__(
        self, mean: list[float], std: list[float], size: int | None = None, interpolation: str = "bilinear"
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).clamp_min(1e-6).view(1, -1, 1, 1))
        self.size, self.interpolation = size, interpolation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            corners = None if self.interpolation == "nearest" else False
            x = nn.functional.interpolate(x, (self.size, self.size), mode=self.interpolation, align_corners=corners)
        return (x - self.mean) / self.std


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ConvClassifier(nn.Module):
    """A convolutional feature extractor, then global average pooling, dropout and a linear classifier."""

    def __init__(self, features: nn.Sequential, feature_channels: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(feature_channels, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(ConvClassifier):
    """Three conv blocks (w, 2w, 4w channels), two poolings, global average pool: for images <= ~64 px."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 32, dropout: float = 0.2) -> None:
        w = width
        features = nn.Sequential(
            conv_bn(in_channels, w), conv_bn(w, w), nn.MaxPool2d(2),
            conv_bn(w, 2 * w), conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            conv_bn(2 * w, 4 * w),
        )  # fmt: skip
        super().__init__(features, 4 * w, n_classes, dropout)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and a (projected when the shape changes) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(c_in, c_out, stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(ConvClassifier):
    """ResNet-style: stem, three stages of two basic blocks (w, 2w, 4w), for larger images."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 32, dropout: float = 0.2) -> None:
        w = width
        features = nn.Sequential(
            conv_bn(in_channels, w),
            BasicBlock(w, w, 1), BasicBlock(w, w, 1),
            BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w, 1),
            BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w, 1),
        )  # fmt: skip
        super().__init__(features, 4 * w, n_classes, dropout)


ARCHITECTURES: dict[str, type[nn.Module]] = {"small_cnn": SmallCNN, "resnet": ResNet}


def check_timm_architecture(name: str) -> None:
    """A ValueError unless timm has a model of this name, saying what timm has that is close."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:6]
        raise ValueError(
            f"architecture {name!r} is neither built in ({', '.join(BUILTIN_ARCHITECTURES)}) nor a timm model"
            f"{' (timm has e.g. ' + ', '.join(close) + ')' if close else ''}; list them with: "
            "python -c \"import timm; print(timm.list_models('*mobilenet*'))\""
        )


if check_timm_architecture not in ARCHITECTURE_CHECKS:
    ARCHITECTURE_CHECKS.append(check_timm_architecture)  # settings validated from here on know timm's names


def backbone_config(name: str) -> dict[str, Any]:
    """A timm model's pretrained config: input_size (C, H, W), interpolation, mean, std, ..."""
    import timm

    return dict(timm.models.get_pretrained_cfg(name).to_dict())


def _timm_body(name: str, in_channels: int, n_classes: int, dropout: float, weights_file: Path | None) -> nn.Module:
    import timm

    options: dict[str, Any] = {"num_classes": n_classes, "in_chans": in_channels, "drop_rate": dropout}
    if not timm.is_model(name):
        raise DataError(f"{name!r} is neither a built-in network ({', '.join(ARCHITECTURES)}) nor a timm model")
    if weights_file is None:
        return timm.create_model(name, pretrained=False, **options)
    # timm's own loading: adapts the first conv to in_chans and drops a classifier of another size
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(weights_file)}, **options)
    except Exception as exc:  # torch, safetensors and timm each raise their own kinds for a file that is not this
        first = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
        raise DataError(f"{weights_file}: not weights of the timm model {name!r} ({first})") from None


def build_network(
    architecture: str,
    in_channels: int,
    n_classes: int,
    width: int,
    dropout: float,
    mean: list[float],
    std: list[float],
    input_size: int | None = None,
    interpolation: str = "bilinear",
    weights_file: Path | None = None,
) -> nn.Sequential:
    """The input layer (resize, normalisation) followed by the named network body.

    `width` applies to the built-in networks; a timm network has its own.
    """
    if architecture in ARCHITECTURES:
        if weights_file is not None:
            raise DataError(f"{weights_file}: pretrained weights are for timm backbones, not {architecture!r}")
        body = ARCHITECTURES[architecture](in_channels, n_classes, width, dropout)
    else:
        body = _timm_body(architecture, in_channels, n_classes, dropout, weights_file)
    return nn.Sequential(Normalize(mean, std, input_size, interpolation), body)


def classifier_layer(net: nn.Module) -> nn.Linear:
    """The final linear layer of a network `build_network` made (its rows are the classes)."""
    body = net[1]
    layer = body.get_classifier() if hasattr(body, "get_classifier") else body.head[-1]
    if not isinstance(layer, nn.Linear):
        raise DataError(f"the classifier of {type(body).__name__} is a {type(layer).__name__}, not a linear layer")
    return layer


def transfer_weights(
    dst: nn.Sequential, src: nn.Sequential, src_classes: list[str], dst_classes: list[str]
) -> dict[str, Any]:
    """Warm start: copy `src`'s tensors into `dst` where name and shape match, and the classifier's rows
    by class name (a class `src` did not know keeps its fresh initial row). Returns what was copied."""
    head, src_head = classifier_layer(dst), classifier_layer(src)
    head_keys = {f"{name}.{p}" for name, m in dst.named_modules() if m is head for p in ("weight", "bias")}
    src_state, state = src.state_dict(), dst.state_dict()
    copied, skipped = 0, []
    for key, tensor in state.items():
        if key in head_keys:
            continue
        if key in src_state and src_state[key].shape == tensor.shape:
            state[key] = src_state[key].clone()
            copied += 1
        else:
            skipped.append(key)
    dst.load_state_dict(state)
    kept = [c for c in dst_classes if c in src_classes]
    with torch.no_grad():
        for c in kept:
            i, j = dst_classes.index(c), src_classes.index(c)
            head.weight[i] = src_head.weight[j]
            if head.bias is not None and src_head.bias is not None:
                head.bias[i] = src_head.bias[j]
    return {
        "tensors_copied": copied,
        "tensors_skipped": skipped,
        "classes_kept": kept,
        "classes_new": [c for c in dst_classes if c not in src_classes],
    }


def count_macs_and_params(net: nn.Module, image_shape: list[int]) -> tuple[int, int]:
    """Multiply-accumulates of one image's forward pass in its convolutions, matrix products and attention
    (element-wise ops are not MACs), and the parameter count. lab2prod's own networks (built-in, pruned or not)
    are counted by forward hooks on their convolutions and linear layers; any other (a timm backbone: attention
    outside modules) by PyTorch's FLOP counter, halved (~2 s of start-up: it imports torch._dynamo)."""
    height, width, channels = image_shape
    x = torch.zeros(1, channels, height, width)
    was_training = net.training
    net.eval()
    counted = (nn.Conv1d, nn.Conv2d, nn.Linear)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
    leaves = [m for m in net.modules() if not list(m.children())]
    ours = all(type(m).__module__.startswith(("torch.nn.", "models.")) for m in net.modules()) and all(
        isinstance(m, counted + norms) for m in leaves if any(True for _ in m.parameters(recurse=False))
    )
    with torch.no_grad():
        if ours:
            macs = 0

            def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
                nonlocal macs
                if isinstance(module, nn.Linear):
                    macs += output.numel() * module.in_features
                else:  # a convolution: each output element sums in_channels / groups x kernel products
                    macs += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

            handles = [m.register_forward_hook(hook) for m in leaves if isinstance(m, counted)]
            try:
                net(x)
            finally:
                for handle in handles:
                    handle.remove()
        else:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                net(x)
            macs = counter.get_total_flops() // 2
    net.train(was_training)
    return int(macs), sum(p.numel() for p in net.parameters())
