"""Checks that two state dicts describe the same architecture, so they can be matched or mixed."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from llfc_core.errors import IncompatiblePairError

MAX_NAMED = 5


def check_same_layout(
    state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]
) -> None:
    """Raise :class:`IncompatiblePairError` unless A and B have the same tensor names and shapes."""
    only_a = sorted(set(state_a) - set(state_b))
    only_b = sorted(set(state_b) - set(state_a))
    if only_a or only_b:
        raise IncompatiblePairError(
            "Models A and B have different tensors "
            f"(only in A: {only_a[:MAX_NAMED]}, only in B: {only_b[:MAX_NAMED]}); "
            "both must be checkpoints of the same arch."
        )
    differing = [key for key in state_a if state_a[key].shape != state_b[key].shape]
    if differing:
        key = differing[0]
        raise IncompatiblePairError(
            f"Models A and B differ in the shape of {len(differing)} tensor(s), e.g. '{key}' is "
            f"{tuple(state_a[key].shape)} in A and {tuple(state_b[key].shape)} in B; "
            "both must be checkpoints of the same arch."
        )
