"""The CIFAR ResNet of He et al. (depth 6n+2), in the layout of the widely used kuangliu code.

State-dict keys, for ``{"name": "resnet", "depth": 8}`` (n = 1 block per stage)::

    conv1.weight                        stem Conv2d 3x3, no bias
    bn1.{weight,bias,running_mean,running_var,num_batches_tracked}
    layer1.0.conv1.weight  layer1.0.bn1.*  layer1.0.conv2.weight  layer1.0.bn2.*
    layer2.0.conv1.weight  ...  layer2.0.shortcut.0.weight  layer2.0.shortcut.1.*
    layer3.0....
    linear.weight  linear.bias

Every conv is bias-free and followed by a BatchNorm. A block is
``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``; the shortcut is an empty
``nn.Sequential`` (identity, no keys) unless the block changes stride or channels, where it is
``Sequential(Conv2d 1x1 stride s, BatchNorm2d)``. Stages have ``16, 32, 64 x width`` channels and
stages 2 and 3 start with stride 2. ``avgpool`` is a global average pool (no tensors), so 32x32
and 8x8 inputs both work. ReLU modules are ``relu`` (stem), ``layerS.B.relu1`` and
``layerS.B.relu2``, registered in forward order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from llfc_core.archs.base import (
    ImageArchitecture,
    reject_unknown_fields,
    require_int,
    require_number,
    scaled_width,
)
from llfc_core.errors import ArchitectureError

STAGE_CHANNELS = (16, 32, 64)
MIN_DEPTH = 8
MAX_DEPTH = 1202
MIN_WIDTH = 1 / 16
MAX_WIDTH = 256.0
"""Width multipliers beyond this are refused outright; the parameter limit catches the rest."""
MAX_CHANNELS = 4096
MAX_INPUT_SIZE = 1024
MAX_CLASSES = 1_000_000


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm, added to a shortcut of the block input, then a ReLU."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        activated: torch.Tensor = self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))
        return activated


class ResNetNetwork(nn.Module):
    """Stem, three stages of :class:`BasicBlock`, global average pool, Linear."""

    def __init__(
        self, in_channels: int, stage_channels: tuple[int, ...], blocks: int, num_classes: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stage_channels[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stage_channels[0])
        self.relu = nn.ReLU()
        channels_in = stage_channels[0]
        for stage, channels_out in enumerate(stage_channels, start=1):
            first_stride = 1 if stage == 1 else 2
            stage_blocks = []
            for b in range(blocks):
                stage_blocks.append(
                    BasicBlock(channels_in, channels_out, first_stride if b == 0 else 1)
                )
                channels_in = channels_out
            self.add_module(f"layer{stage}", nn.Sequential(*stage_blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        for stage in range(1, len(STAGE_CHANNELS) + 1):
            out = getattr(self, f"layer{stage}")(out)
        logits: torch.Tensor = self.linear(torch.flatten(self.avgpool(out), 1))
        return logits


@dataclass(frozen=True)
class ResNet(ImageArchitecture):
    """ResNet-``depth`` for small images: ``(depth - 2) / 6`` blocks in each of three stages."""

    depth: int = 20
    width: float = 1.0
    in_channels: int = 3
    input_size: int = 32
    classes: int = 10
    name: ClassVar[str] = "resnet"

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> ResNet:
        reject_unknown_fields(spec, {"depth", "width", "in_channels", "input_size", "num_classes"})
        depth = require_int(spec, "depth", 20, MIN_DEPTH, MAX_DEPTH)
        if (depth - 2) % 6 != 0:
            raise ArchitectureError(
                f"The resnet arch field 'depth' must be 6n+2 (8, 14, 20, 32, 44, 56, 110...), "
                f"got {depth}."
            )
        return cls(
            depth=depth,
            width=require_number(spec, "width", 1.0, MIN_WIDTH, MAX_WIDTH),
            in_channels=require_int(spec, "in_channels", 3, 1, MAX_CHANNELS),
            input_size=require_int(spec, "input_size", 32, 1, MAX_INPUT_SIZE),
            classes=require_int(spec, "num_classes", 10, 1, MAX_CLASSES),
        )

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(scaled_width(c, self.width) for c in STAGE_CHANNELS)

    @property
    def has_batch_norm(self) -> bool:
        return True

    def build(self) -> nn.Module:
        return ResNetNetwork(
            self.in_channels, self.stage_channels, self.blocks_per_stage, self.classes
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "depth": self.depth,
            "width": self.width,
            "in_channels": self.in_channels,
            "input_size": self.input_size,
            "num_classes": self.classes,
        }
