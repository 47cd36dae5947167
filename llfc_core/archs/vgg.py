"""VGG as in most CIFAR code, with or without BatchNorm: torchvision's ``features`` numbering,
but one Linear for a classifier (torchvision's VGG has three, ``classifier.0/3/6``).

State-dict keys, for ``{"name": "vgg", "depth": 11, "batch_norm": true}``::

    features.0.weight  features.0.bias                       Conv2d 3x3, padding 1
    features.1.weight  features.1.bias  features.1.running_mean
    features.1.running_var  features.1.num_batches_tracked   BatchNorm2d
    (features.2 is nn.ReLU, features.3 is MaxPool2d(2): no tensors)
    features.4.weight  ...                                   the next conv
    classifier.weight  classifier.bias                       Linear(last channels, num_classes)

Without BatchNorm every block is ``Conv2d, ReLU`` (``features.0``, ``features.2``, pool at
``features.2 + 1`` ...), as in torchvision's ``vgg11``. Each ``"M"`` of the configuration is a
``MaxPool2d(2)``, or ``nn.Identity()`` where pooling would shrink the image below 1x1 (the 8x8
digits keep only three pools), so keys never depend on the input size. After ``features`` an
``AdaptiveAvgPool2d(1)`` (no tensors; a no-op when the map is already 1x1, as for 32x32 inputs)
lets any input size reach the single-Linear classifier of the common CIFAR VGG.
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
    require_bool,
    require_int,
    require_number,
    scaled_width,
)
from llfc_core.errors import ArchitectureError

POOL = "M"
CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    13: (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    16: (
        *(64, 64, POOL, 128, 128, POOL),
        *(256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
    ),
}
"""Channel counts of the conv layers, and ``"M"`` where a 2x2 max-pool halves the image."""

MIN_WIDTH = 1 / 64
MAX_WIDTH = 64.0
"""Width multipliers beyond this are refused outright; the parameter limit catches the rest."""
MAX_CHANNELS = 4096
MAX_INPUT_SIZE = 1024
MAX_CLASSES = 1_000_000


class VGGNetwork(nn.Module):
    """``features`` (conv blocks and pools), a global average pool, and a Linear ``classifier``."""

    def __init__(self, features: nn.Sequential, num_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(num_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
        return logits


@dataclass(frozen=True)
class VGG(ImageArchitecture):
    """VGG-11/13/16 with channel counts ``64..512 x width``."""

    depth: int = 16
    width: float = 1.0
    batch_norm: bool = True
    in_channels: int = 3
    input_size: int = 32
    classes: int = 10
    name: ClassVar[str] = "vgg"

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> VGG:
        reject_unknown_fields(
            spec, {"depth", "width", "batch_norm", "in_channels", "input_size", "num_classes"}
        )
        depth = require_int(spec, "depth", 16, 11, 16)
        if depth not in CONFIGS:
            raise ArchitectureError(
                f"The vgg arch field 'depth' must be one of {', '.join(map(str, CONFIGS))}, "
                f"got {depth}."
            )
        return cls(
            depth=depth,
            width=require_number(spec, "width", 1.0, MIN_WIDTH, MAX_WIDTH),
            batch_norm=require_bool(spec, "batch_norm", True),
            in_channels=require_int(spec, "in_channels", 3, 1, MAX_CHANNELS),
            input_size=require_int(spec, "input_size", 32, 1, MAX_INPUT_SIZE),
            classes=require_int(spec, "num_classes", 10, 1, MAX_CLASSES),
        )

    @property
    def has_batch_norm(self) -> bool:
        return self.batch_norm

    def channels(self) -> list[int]:
        """Output channels of every conv layer, in order."""
        return [scaled_width(c, self.width) for c in CONFIGS[self.depth] if isinstance(c, int)]

    def build(self) -> nn.Module:
        layers: list[nn.Module] = []
        channels_in = self.in_channels
        size = self.input_size
        widths = iter(self.channels())
        for entry in CONFIGS[self.depth]:
            if entry == POOL:
                # MaxPool2d(2) floors odd sizes; below 2x2 there is nothing left to pool.
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                else:
                    layers.append(nn.Identity())
                continue
            channels_out = next(widths)
            layers.append(nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1))
            if self.batch_norm:
                layers.append(nn.BatchNorm2d(channels_out))
            layers.append(nn.ReLU())
            channels_in = channels_out
        return VGGNetwork(nn.Sequential(*layers), channels_in, self.classes)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "depth": self.depth,
            "width": self.width,
            "batch_norm": self.batch_norm,
            "in_channels": self.in_channels,
            "input_size": self.input_size,
            "num_classes": self.classes,
        }
