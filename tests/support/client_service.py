"""Shared by the client and CLI tests: the settings of their ``llfc serve`` and small models."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

JOB_TIMEOUT_S = 120.0
RETRY_AFTER_S = 1
MLP_ARCH = {"name": "mlp", "widths": [64, 32, 10]}
MLP_NUM_PARAMS = 64 * 32 + 32 + 32 * 10 + 10
SERVICE_SETTINGS = {
    "LLFC_AUTH": "true",
    "LLFC_DEVICE": "cpu",
    "LLFC_RETRY_AFTER_SECONDS": str(RETRY_AFTER_S),
    "LLFC_LOG_LEVEL": "warning",
}
"""The embedded service of these tests: auth on, CPU, a one-second Retry-After."""


@dataclass
class RunningService:
    """Where the tests' ``llfc serve`` listens and the API key of its one owner."""

    url: str
    api_key: str


def mlp_state_dict(seed: int, widths: tuple[int, ...] = (64, 32, 10)) -> dict[str, torch.Tensor]:
    """An ordinary ``nn.Sequential`` MLP's state dict."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        if index:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(fan_in, fan_out))
    return torch.nn.Sequential(*layers).state_dict()


def write_mlp_checkpoint(path: Path, seed: int, widths: tuple[int, ...] = (64, 32, 10)) -> Path:
    """An ordinary ``nn.Sequential`` MLP's state dict saved as safetensors."""
    save_file(mlp_state_dict(seed, widths), str(path))
    return path
