"""Merging N models of one arch into one: MergeMany's weight average, or feature averaging.

``weight_average``: MergeMany (:mod:`llfc_core.merging.many`) brings every model into one basis,
the permuted weights are averaged and the average repaired (:mod:`llfc_core.merging.averaging`).
``feature_average``: from that repaired average, every weighted layer is refitted so that its
pre-activations approximate the mean of the permuted models' (:mod:`llfc_core.merging.feature_fit`).
:func:`llfc_core.merging.evaluation.evaluate_merge` scores the result against its inputs and the
unmatched average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset
from llfc_core.device import resolve_device
from llfc_core.errors import DatasetError, InvalidParameterError
from llfc_core.matching import check_function
from llfc_core.merging.averaging import (
    RepairStep,
    average_states,
    repair_step,
    uniform_weights,
)
from llfc_core.merging.feature_fit import DEFAULT_RIDGE, fit_feature_average
from llfc_core.merging.many import merge_many_permutations
from llfc_core.pair import check_same_layout
from llfc_core.params import DEFAULT_BATCH_SIZE, MERGE_METHODS, check_int
from llfc_core.permutation import StateDict, permutation_to_lists
from llfc_core.progress import Reporter
from llfc_core.repair import default_repair_mode

MAX_ROUNDS = 1000
MAX_RIDGE = 1e6
"""The largest ridge: at 1e6 a digits MLP's fit is already its start, the matched average (its
loss to 3e-6), and far above it the penalty overflows into a model of infinities."""
STAGE_SHARES = {"weight_average": (0.8, 0.2, 0.0), "feature_average": (0.25, 0.05, 0.7)}
"""Each method's progress shared out between MergeMany, the repair and the fit (one pass over
the data per layer)."""


@dataclass(frozen=True)
class MergeResult:
    """A merged model, how its inputs were brought into one basis, and which layers were fitted.

    ``permutations[i]`` maps input i into the common basis (unit k of the permuted input is unit
    ``permutations[i][name][k]`` of input i). ``matched_average`` is the repaired mean of the
    permuted inputs: the merged model itself for ``weight_average``, the fit's starting point for
    ``feature_average``.
    """

    method: str
    merged: StateDict
    matched_average: StateDict
    permutations: list[dict[str, list[int]]]
    rounds: int
    """MergeMany rounds made (the last one moved no model, unless ``max_rounds`` stopped it)."""
    fitted_layers: list[str]
    """Layers refitted to the average features, in forward order (none for a weight average)."""
    unfitted_layers: dict[str, str]
    """Weighted layers a feature average left at the weight average, with the reason."""
    function_checks: list[dict[str, Any]]
    """Per input, how much its permuted copy's outputs differ from its own (a proof)."""

    def to_json(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-ready."""
        return {
            "method": self.method,
            "permutations": self.permutations,
            "rounds": self.rounds,
            "fitted_layers": self.fitted_layers,
            "unfitted_layers": self.unfitted_layers,
            "function_checks": self.function_checks,
        }


def check_merge_inputs(states: Sequence[StateDict]) -> None:
    """Refuse fewer than two models, or models of different layouts."""
    if len(states) < 2:
        raise InvalidParameterError(f"A merge needs at least 2 models, got {len(states)}.")
    for state in states[1:]:
        check_same_layout(states[0], state)


def check_merge_params(method: str, max_rounds: int, ridge: float) -> None:
    """Refuse an unknown method, ``max_rounds`` outside 1 to :data:`MAX_ROUNDS` or a ridge that
    is not a number above 0 and at most :data:`MAX_RIDGE`, each with a sentence (the service
    checks a submission with it)."""
    if method not in MERGE_METHODS:
        raise InvalidParameterError(
            f"The merge method must be one of {', '.join(MERGE_METHODS)}, got {method!r}."
        )
    check_int(max_rounds, 1, MAX_ROUNDS, "The parameter 'max_rounds'")
    if isinstance(ridge, bool) or not isinstance(ridge, int | float) or not 0 < ridge <= MAX_RIDGE:
        raise InvalidParameterError(
            f"The parameter 'ridge' must be a positive number, at most {MAX_RIDGE:g} (which "
            f"already keeps the weight average), got {ridge!r}."
        )


def merge_many(
    arch: Architecture,
    states: Sequence[StateDict],
    data: Dataset,
    *,
    method: str = "weight_average",
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_rounds: int = 100,
    ridge: float = DEFAULT_RIDGE,
    repair: RepairStep | None = None,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
) -> MergeResult:
    """Merge ``states`` by ``method`` (one of :data:`llfc_core.params.MERGE_METHODS`).

    ``data`` (training data) is read by the repair step, by the feature fit and, on its first
    batch, by the proof that each permuted input still computes its own function. ``repair``
    defaults to :func:`~llfc_core.merging.averaging.repair_step` of the arch's default mode
    (a BatchNorm reset for BatchNorm nets, else none).
    """
    check_merge_params(method, max_rounds, ridge)
    check_merge_inputs(states)
    if data.num_examples == 0:
        raise DatasetError(
            f"The dataset '{data.name}' holds no examples to repair and fit the merge on."
        )
    device = device or resolve_device("auto")
    reporter = reporter or Reporter()
    repair = repair or repair_step(
        arch, data, default_repair_mode(arch), batch_size=batch_size, device=device
    )
    on_device = [{key: value.to(device) for key, value in state.items()} for state in states]
    matching_share, repair_share, fit_share = STAGE_SHARES[method]
    perms, permuted, rounds = merge_many_permutations(
        arch.permutation_spec(),
        on_device,
        seed=seed,
        max_rounds=max_rounds,
        reporter=reporter.sub(0.0, matching_share),
    )
    function_checks = [
        check_function(arch, state, moved, data, seed=seed, device=device)
        for state, moved in zip(on_device, permuted, strict=True)
    ]
    weights = uniform_weights(len(states))
    matched_average = repair(
        permuted,
        weights,
        average_states(permuted),
        reporter.sub(matching_share, repair_share),
    )
    merged = matched_average
    fitted: list[str] = []
    unfitted: dict[str, str] = {}
    if method == "feature_average":
        merged, fitted, unfitted = fit_feature_average(
            arch,
            matched_average,
            permuted,
            data,
            ridge=ridge,
            batch_size=batch_size,
            device=device,
            reporter=reporter.sub(matching_share + repair_share, fit_share),
        )
    matched_on_cpu = {key: value.cpu() for key, value in matched_average.items()}
    return MergeResult(
        method=method,
        merged=matched_on_cpu
        if merged is matched_average
        else {key: value.cpu() for key, value in merged.items()},
        matched_average=matched_on_cpu,
        permutations=[permutation_to_lists(perm) for perm in perms],
        rounds=rounds,
        fitted_layers=fitted,
        unfitted_layers=unfitted,
        function_checks=function_checks,
    )
