"""A sweep: the analysis of every unordered pair of N models, as N x N matrices.

Each pair i < j is analysed exactly as :func:`llfc_core.analysis.analyze_pair` analyses A = model
i and B = model j (the same code, so an entry equals that pair's analyze job), but what depends
on one model alone is done once per model, not once per pair it is in: validating its state
dict, fitting the data to the arch, building each endpoint with its BatchNorm statistics
re-estimated, and its loss and error as uploaded (:class:`~llfc_core.analysis.per_model.PerModel`
keeps them). The pair's own work (the matching, the path, the pass over the data) is not shared.

The diagonal is not computed: a model with itself is connected. theta_alpha = lerp(A, A, alpha)
is A exactly, so every loss and error on the path is A's, and its features are A's, whose
cosine with the target (A's again) is exactly 1; the loss and error barriers and the LLFC
distance are 0 (``tests/core/test_sweep.py`` analyses a model with itself to show it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import torch

from llfc_core.analysis import AnalysisConfig, analysis_data, analyze_validated
from llfc_core.analysis.config import alpha_key
from llfc_core.analysis.per_model import PerModel
from llfc_core.archs.base import Architecture
from llfc_core.checkpoints import validate_state_dict
from llfc_core.data import Dataset
from llfc_core.device import resolve_device
from llfc_core.errors import InvalidParameterError
from llfc_core.pair import check_same_layout
from llfc_core.progress import Reporter
from llfc_results import SweepPair, SweepResult
from llfc_results.sweep import SWEEP_LLFC_ALPHA

MIN_SWEEP_MODELS = 2


def check_sweep(config: AnalysisConfig, num_models: int) -> None:
    """Refuse a sweep whose matrices could not be filled: fewer than two models, or no LLFC at
    alpha 0.5 (the LLFC distance matrix's alpha)."""
    if num_models < MIN_SWEEP_MODELS:
        raise InvalidParameterError(
            f"A sweep compares at least {MIN_SWEEP_MODELS} models, got {num_models}."
        )
    if SWEEP_LLFC_ALPHA not in {alpha_key(alpha) for alpha in config.llfc_alphas}:
        raise InvalidParameterError(
            "A sweep's LLFC distance matrix is read at alpha 0.5, so 'llfc_alphas' must hold "
            f"0.5, got {list(config.llfc_alphas)}."
        )


def sweep_pairs(num_models: int) -> list[tuple[int, int]]:
    """Every unordered pair (i, j), i < j, in the order a sweep analyses them."""
    return [(a, b) for a in range(num_models) for b in range(a + 1, num_models)]


def _labelled(reporter: Reporter, start: float, span: float, label: str) -> Reporter:
    """A sub-reporter whose stages are prefixed with ``label``."""
    sub = reporter.sub(start, span)
    callback = reporter.callback
    return dataclasses.replace(
        sub, callback=lambda fraction, stage: callback(fraction, f"{label}: {stage}")
    )


def analyze_sweep(
    arch: Architecture,
    states: Sequence[Mapping[str, torch.Tensor]],
    dataset: Dataset,
    config: AnalysisConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    train_dataset: Dataset | None = None,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
    on_pair: Callable[[SweepPair], None] | None = None,
) -> tuple[SweepResult, list[SweepPair]]:
    """Analyse every unordered pair of ``states`` on ``dataset``; the sweep's matrices and the
    pairs' analyses (``pair.analysis.to_json()`` is that pair's analyze result).

    ``names`` label the models in the result and in progress stages (default ``model_<i>``);
    ``on_pair`` is called with each pair as soon as it is analysed. Progress: one equal share
    per pair, stages such as "pair 3 of 15: model_1 vs model_4: ...".
    """
    config = config or AnalysisConfig()
    check_sweep(config, len(states))
    labels = list(names) if names is not None else [f"model_{i}" for i in range(len(states))]
    if len(labels) != len(states):
        raise InvalidParameterError(f"A sweep of {len(states)} models needs as many names.")
    reporter = reporter or Reporter()
    device = device or resolve_device("auto")
    validated = [validate_state_dict(arch, state) for state in states]
    for state in validated[1:]:
        check_same_layout(validated[0], state)
    data = analysis_data(arch, dataset, config, train_dataset, device=device)
    per_model = PerModel(validated)
    pairs = sweep_pairs(len(states))
    analysed = []
    for number, (a, b) in enumerate(pairs):
        label = f"pair {number + 1} of {len(pairs)}: {labels[a]} vs {labels[b]}"
        pair = SweepPair(
            a,
            b,
            analyze_validated(
                arch,
                validated[a],
                validated[b],
                data,
                config,
                device=device,
                reporter=_labelled(reporter, number / len(pairs), 1 / len(pairs), label),
                per_model=per_model,
            ),
        )
        analysed.append(pair)
        if on_pair is not None:
            on_pair(pair)
    reporter.report(1.0, "sweep finished")
    return SweepResult.from_pairs(labels, analysed), analysed
