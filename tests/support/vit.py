"""A vision transformer small enough for the test suite: timm's ViT on 8x8 digits, 2 blocks of 4
heads of 8 dimensions."""

from __future__ import annotations

from typing import Any

VIT_DIGITS: dict[str, Any] = {
    "name": "timm",
    "model": "vit_tiny_patch16_224",
    "kwargs": {
        "img_size": 8,
        "patch_size": 2,
        "in_chans": 1,
        "num_classes": 10,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 4,
    },
    "input_shape": [1, 8, 8],
}
HEADS, HEAD_SIZE = 4, 8
