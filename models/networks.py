"""Image classification networks, built by name from a spec (the arguments of `build_network`).

Every network takes float32 NCHW pixels in [0, 1] and starts with its own normalisation layer, so
the exported ONNX model needs no preprocessing beyond `pixel / 255`.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn


class ModelSpec(BaseModel):
    """What `build_network` needs to rebuild a network: stored in every model file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str
    in_channels: int
    n_classes: int
    width: int
    dropout: float
    mean: list[float]  # per-channel normalisation statistics of the training images, pixel / 255
    std: list[float]

    def build(self) -> nn.Sequential:
        return build_network(**self.model_dump())


class Normalize(nn.Module):
    """(x - mean) / std per channel; the statistics are buffers, so they travel with the weights."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).clamp_min(1e-6).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


def build_network(
    architecture: str, in_channels: int, n_classes: int, width: int, dropout: float, mean: list[float], std: list[float]
) -> nn.Sequential:
    """Normalisation followed by the named network body."""
    body = ARCHITECTURES[architecture](in_channels, n_classes, width, dropout)
    return nn.Sequential(Normalize(mean, std), body)


def count_macs_and_params(net: nn.Module, image_shape: list[int]) -> tuple[int, int]:
    """Multiply-accumulates of one image's forward pass, and the parameter count."""
    import torch_pruning as tp

    height, width, channels = image_shape
    was_training = net.training
    macs, params = tp.utils.count_ops_and_params(net.eval(), torch.zeros(1, channels, height, width))
    net.train(was_training)
    return int(macs), int(params)
