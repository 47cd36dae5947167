"""Averaging N state dicts of one arch, and the repair step that follows every average.

The mean of N models' weights is not a model whose BatchNorm statistics are the mean of theirs
(the variance of a mixture is not the mixture of variances), and without BatchNorm its
pre-activations shrink (the variance collapse REPAIR corrects). So every average here is
followed by a :data:`RepairStep`: by default the BatchNorm reset of
:func:`llfc_core.interpolation.reset_batch_norm` for BatchNorm nets and nothing otherwise
(:func:`batch_norm_reset`); a caller may pass another, such as REPAIR, with the same signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset, fit_to_arch
from llfc_core.interpolation import reset_batch_norm
from llfc_core.models import load_model
from llfc_core.permutation import StateDict
from llfc_core.progress import Reporter

RepairStep = Callable[[Sequence[StateDict], Sequence[float], StateDict, Reporter], StateDict]
"""``repair(inputs, weights, average, reporter)``: the ``average`` of the ``inputs`` (already in
one basis) with mixing ``weights``, repaired. Its arguments are those of
``llfc_core.repair.repair_mixture`` after the arch, so that REPAIR is a one-line closure."""


def average_states(states: Sequence[Mapping[str, torch.Tensor]]) -> StateDict:
    """The mean of every floating tensor over ``states``; integer counters (BatchNorm's
    ``num_batches_tracked``) are taken from the first."""
    first = states[0]
    averaged: StateDict = {}
    for key, tensor in first.items():
        if tensor.is_floating_point():
            averaged[key] = torch.stack([state[key] for state in states]).mean(0)
        else:
            averaged[key] = tensor.clone()
    return averaged


def uniform_weights(count: int) -> list[float]:
    """The mixing weights of a plain mean of ``count`` models."""
    return [1.0 / count] * count


def batch_norm_reset(
    arch: Architecture, data: Dataset, *, batch_size: int, device: torch.device
) -> RepairStep:
    """The default repair: BatchNorm statistics re-estimated on ``data`` for a BatchNorm net
    (the interpolation's "reset"), the average unchanged otherwise."""

    def reset(
        inputs: Sequence[StateDict],
        weights: Sequence[float],
        average: StateDict,
        reporter: Reporter,
    ) -> StateDict:
        if not arch.has_batch_norm:
            return average
        model = load_model(arch, average, device)
        reset_batch_norm(
            model, fit_to_arch(arch, data), batch_size=batch_size, device=device, reporter=reporter
        )
        return {key: value.detach() for key, value in model.state_dict().items()}

    return reset
