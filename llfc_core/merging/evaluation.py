"""Scoring a merge: the merged model against its inputs and against plain weight averages."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset
from llfc_core.merging import MergeResult
from llfc_core.merging.averaging import RepairStep, average_states, uniform_weights
from llfc_core.merging.feature_fit import feature_error
from llfc_core.permutation import StateDict, apply_permutation
from llfc_core.progress import Reporter
from llfc_core.training import evaluate


@dataclass(frozen=True)
class Score:
    """Mean loss and error of one model on the evaluation data (:func:`evaluate`)."""

    loss: float
    error: float


@dataclass(frozen=True)
class MergeEvaluation:
    """The merged model's scores beside its inputs' and the two weight averages'.

    ``naive_average`` is the repaired mean of the inputs as given (no matching),
    ``matched_average`` that of the inputs permuted into one basis. ``feature_error`` is, per
    model, the mean over weighted layers of
    :func:`~llfc_core.merging.feature_fit.feature_error` against the permuted inputs' mean.
    """

    merged: Score
    inputs: list[Score]
    naive_average: Score
    matched_average: Score
    feature_error: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _score(
    arch: Architecture, state: StateDict, data: Dataset, batch_size: int, device: torch.device
) -> Score:
    loss, error = evaluate(arch, state, data, device=device, batch_size=batch_size)
    return Score(loss, error)


def evaluate_merge(
    arch: Architecture,
    result: MergeResult,
    states: Sequence[StateDict],
    eval_data: Dataset,
    repair: RepairStep,
    *,
    batch_size: int,
    device: torch.device,
    reporter: Reporter | None = None,
) -> MergeEvaluation:
    """Score ``result`` (a merge of ``states``) on ``eval_data``; ``repair`` is the step the merge
    used, applied to the naive average too so that both averages are compared alike."""
    reporter = reporter or Reporter()
    spec = arch.permutation_spec()
    permuted = [
        apply_permutation(
            spec, {name: torch.tensor(indices) for name, indices in perm.items()}, state
        )
        for perm, state in zip(result.permutations, states, strict=True)
    ]
    weights = uniform_weights(len(states))
    naive = repair(list(states), weights, average_states(states), reporter.sub(0.0, 0.1))
    reporter.report(0.2, "scoring the merged model")
    errors = {
        "merged": feature_error(
            arch, result.merged, permuted, eval_data, batch_size=batch_size, device=device
        ),
        "matched_average": feature_error(
            arch, result.matched_average, permuted, eval_data, batch_size=batch_size, device=device
        ),
    }
    reporter.report(0.6, "scoring the inputs")
    evaluation = MergeEvaluation(
        merged=_score(arch, result.merged, eval_data, batch_size, device),
        inputs=[_score(arch, state, eval_data, batch_size, device) for state in states],
        naive_average=_score(arch, naive, eval_data, batch_size, device),
        matched_average=_score(arch, result.matched_average, eval_data, batch_size, device),
        feature_error={
            name: statistics.fmean(by_layer.values()) for name, by_layer in errors.items()
        },
    )
    reporter.report(1.0, "merge scored")
    return evaluation
