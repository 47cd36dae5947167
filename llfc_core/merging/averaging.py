"""Averaging N state dicts of one arch, and the repair step that follows every average.

The mean of N models' weights is not a model whose BatchNorm statistics are the mean of theirs
(the variance of a mixture is not the mixture of variances), and without BatchNorm its
pre-activations shrink (the variance collapse REPAIR corrects). So every average here is
followed by a :data:`RepairStep` (:func:`repair_step`): one of the repair modes of
:mod:`llfc_core.repair`, by default a BatchNorm reset for BatchNorm nets and nothing otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset
from llfc_core.permutation import StateDict
from llfc_core.progress import Reporter
from llfc_core.repair import check_repair_mode, repair_mixture

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


def repair_step(
    arch: Architecture, data: Dataset, mode: str, *, batch_size: int, device: torch.device
) -> RepairStep:
    """The repair ``mode`` (:data:`llfc_core.params.REPAIR_MODES`) of an average on ``data``:
    ``reset`` re-estimates BatchNorm statistics, ``repair`` is REPAIR with the inputs' weighted
    statistics as targets (:func:`llfc_core.repair.repair_mixture`), ``none`` keeps the average."""
    mode = check_repair_mode(mode)

    def repair(
        inputs: Sequence[StateDict],
        weights: Sequence[float],
        average: StateDict,
        reporter: Reporter,
    ) -> StateDict:
        return repair_mixture(
            arch,
            inputs,
            weights,
            average,
            data,
            mode,
            batch_size=batch_size,
            device=device,
            reporter=reporter,
        )

    return repair
