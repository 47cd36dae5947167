"""A BatchNorm pair whose uploaded running statistics are wrong, for the tests of endpoints
reported as uploaded beside their re-estimated numbers (engine, CLI tables, plots, web view).
"""

from __future__ import annotations

import torch

from llfc_core.archs import parse_arch
from llfc_core.archs.base import Architecture
from llfc_core.data import digits
from llfc_core.permutation import StateDict
from llfc_core.training import TrainConfig, train_modes

RESNET = {"name": "resnet", "depth": 8, "width": 0.5, "in_channels": 1, "input_size": 8}
"""A ResNet-8 for digits (8x8, one channel): trained for 3 epochs in about 2 s on a CPU."""


def with_wrong_running_statistics(state: StateDict) -> StateDict:
    """``state`` whose BatchNorm running means are shifted by 1 and variances cut to 5%: the
    weights are as trained, but the model as uploaded normalises every channel wrongly (a
    trained ResNet-8 then errs on most digits; re-estimated, it errs on few)."""
    wrong = dict(state)
    for key, tensor in state.items():
        if key.endswith("running_mean"):
            wrong[key] = tensor + 1.0
        elif key.endswith("running_var"):
            wrong[key] = tensor * 0.05
    return wrong


def trained_resnet_pair() -> tuple[Architecture, StateDict, StateDict]:
    """The arch of :data:`RESNET` and two modes of it trained on digits from seed 0."""
    arch = parse_arch(RESNET)
    config = TrainConfig(epochs=3, seed=0)
    state_a, state_b = train_modes(arch, digits("train"), config, device=torch.device("cpu"))
    return arch, state_a, state_b
