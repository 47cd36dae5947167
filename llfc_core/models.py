"""Turning an (arch, state dict) pair into a ready-to-run model."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from llfc_core.archs.base import Architecture


def load_model(
    arch: Architecture, state: Mapping[str, torch.Tensor], device: torch.device
) -> nn.Module:
    """The arch on ``device`` holding a copy of ``state``, in eval mode.

    Built on the meta device first so no time is spent on a random initialisation that the
    state dict overwrites anyway.
    """
    with torch.device("meta"):
        model = arch.build()
    model = model.to_empty(device=device)
    model.load_state_dict(dict(state))
    return model.eval()
