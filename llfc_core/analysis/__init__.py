"""The paper's whole pipeline for a pair of modes: LMC, LLFC, Conditions I and II, the Lemma.

``analyze_pair`` measures B as given ("naive") and, when asked, B permuted onto A by weight or
activation matching ("matched"), so one sees what a matching changes.

The endpoints of a BatchNorm net are measured after re-estimating their statistics, like every
point of the path, so the barriers compare like with like; each endpoint also carries its loss and
error as uploaded (its own running statistics), since those are the numbers its owner knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial

import torch

from llfc_core.analysis.config import AnalysisConfig, alpha_key
from llfc_core.analysis.pair_metrics import measure_pair
from llfc_core.analysis.per_model import PerModel
from llfc_core.analysis.repairs import measure_repairs
from llfc_core.archs.base import Architecture
from llfc_core.checkpoints import validate_state_dict
from llfc_core.data import Dataset, fit_to_arch
from llfc_core.device import resolve_device
from llfc_core.errors import DatasetError
from llfc_core.matching import match_models
from llfc_core.metrics import DISTANCE_NAMES
from llfc_core.pair import check_same_layout
from llfc_core.permutation import StateDict
from llfc_core.placement import place_dataset
from llfc_core.progress import Reporter
from llfc_core.training import evaluate
from llfc_results import AnalysisResult, Endpoint, LossError, PairResult

MATCH_SHARE = 0.2
AS_UPLOADED_SHARE = 0.1
"""Of the progress, when BatchNorm statistics are re-estimated: evaluating A and B as uploaded."""
REPAIRS_SHARE = 0.4
"""Of each pair's progress, when a list of repairs is compared: the other repairs' LMC and the
variance ratios."""


@dataclass(frozen=True)
class AnalysisData:
    """The data of an analysis, fitted to its arch: ``dataset`` to measure on, ``side_data``
    for the matchings that need data and the repair of interpolated nets (``dataset`` unless
    one was given)."""

    dataset: Dataset
    side_data: Dataset


def analysis_data(
    arch: Architecture,
    dataset: Dataset,
    config: AnalysisConfig,
    train_dataset: Dataset | None = None,
    *,
    device: torch.device,
) -> AnalysisData:
    """Check ``config``'s layers against the arch, fit the data to it (DatasetError when it
    holds no examples) and place it on ``device`` once for every pass of the analysis."""
    config.check_layers(arch.feature_layers())
    dataset = fit_to_arch(arch, dataset)
    if dataset.num_examples == 0:
        raise DatasetError("The dataset holds no examples; an analysis needs at least one.")
    dataset = place_dataset(dataset, device)
    if train_dataset is None:
        return AnalysisData(dataset, dataset)
    return AnalysisData(dataset, place_dataset(fit_to_arch(arch, train_dataset), device))


def analyze_pair(
    arch: Architecture,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    dataset: Dataset,
    config: AnalysisConfig | None = None,
    *,
    train_dataset: Dataset | None = None,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
) -> AnalysisResult:
    """Analyse A and B on ``dataset``; ``.to_json()`` of the answer is the API's "analyze result".

    ``train_dataset`` (default: ``dataset``) feeds the matchings that need data and the repair
    of interpolated nets (BatchNorm re-estimation, REPAIR's statistics).
    """
    config = config or AnalysisConfig()
    state_a = validate_state_dict(arch, state_a)
    state_b = validate_state_dict(arch, state_b)
    check_same_layout(state_a, state_b)
    device = device or resolve_device("auto")
    return analyze_validated(
        arch,
        state_a,
        state_b,
        analysis_data(arch, dataset, config, train_dataset, device=device),
        config,
        device=device,
        reporter=reporter or Reporter(),
        # The naive and the matched pair share A, and B as uploaded is evaluated once.
        per_model=PerModel([state_a, state_b]),
    )


def analyze_validated(
    arch: Architecture,
    state_a: StateDict,
    state_b: StateDict,
    data: AnalysisData,
    config: AnalysisConfig,
    *,
    device: torch.device,
    reporter: Reporter,
    per_model: PerModel,
) -> AnalysisResult:
    """:func:`analyze_pair` of state dicts already validated for the arch, on data already
    fitted to it, the work about single models read from ``per_model`` when it holds it."""
    dataset, side_data = data.dataset, data.side_data
    repair = config.repair_modes(arch.has_batch_norm)[0]
    reestimated = repair == "reset" and arch.has_batch_norm

    matching = None
    matched_b = None
    measure_start = 0.0
    if config.match != "none":
        match = match_models(
            arch,
            state_a,
            state_b,
            config.match,
            side_data,
            seed=config.seed,
            batch_size=config.batch_size,
            symmetry=config.symmetry,
            ste=config.ste_config(),
            device=device,
            reporter=reporter.sub(0.0, MATCH_SHARE),
        )
        matched_b = match.permuted_b
        matching = match.summary()
        del matching["permutation"]
        measure_start = MATCH_SHARE

    pairs = [("naive", state_b)] + ([("matched", matched_b)] if matched_b is not None else [])
    as_uploaded_share = AS_UPLOADED_SHARE if reestimated else 0.0
    share = (1.0 - measure_start - as_uploaded_share) / len(pairs)
    measured_pairs: dict[str, PairResult] = {}
    measured_endpoints: dict[str, LossError] = {}
    repairs_share = REPAIRS_SHARE if config.compares_repairs else 0.0
    for index, (pair_name, b_side) in enumerate(pairs):
        pair_reporter = reporter.sub(measure_start + index * share, share)
        measured, endpoints = measure_pair(
            arch,
            state_a,
            b_side,
            dataset,
            config,
            bn_data=side_data,
            device=device,
            reporter=pair_reporter.sub(0.0, 1.0 - repairs_share),
            per_model=per_model,
        )
        if config.compares_repairs:
            repairs, ratio = measure_repairs(
                arch,
                state_a,
                b_side,
                dataset,
                config,
                measured.lmc,
                bn_data=side_data,
                device=device,
                reporter=pair_reporter.sub(1.0 - repairs_share, repairs_share),
            )
            measured = replace(measured, repairs=repairs, variance_ratio=ratio)
        measured_pairs[pair_name] = measured
        # A and B themselves are the same in every pair: the first pair's numbers stand.
        measured_endpoints = measured_endpoints or endpoints
    result = AnalysisResult(
        pairs=measured_pairs,
        endpoints=_with_as_uploaded(
            measured_endpoints,
            arch,
            {"a": state_a, "b": state_b},
            dataset,
            reestimated,
            batch_size=config.batch_size,
            device=device,
            reporter=reporter.sub(1.0 - as_uploaded_share, as_uploaded_share),
            per_model=per_model,
        ),
        settings={
            "match": config.match,
            "symmetry": config.symmetry,
            "alphas": list(config.alphas),
            "llfc_alphas": [float(alpha_key(a)) for a in config.llfc_alphas],
            "reset_bn": reestimated,
            "repair": repair,
            "num_examples": dataset.num_examples,
            "batch_size": config.batch_size,
            "device": str(device),
        },
        distances=DISTANCE_NAMES,
        matching=matching,
    )
    reporter.report(1.0, "analysis finished")
    return result


def _with_as_uploaded(
    endpoints: Mapping[str, LossError],
    arch: Architecture,
    states: Mapping[str, StateDict],
    dataset: Dataset,
    reestimated: bool,
    *,
    batch_size: int,
    device: torch.device,
    reporter: Reporter,
    per_model: PerModel,
) -> dict[str, Endpoint]:
    """Each measured endpoint labelled with ``batch_norm_reestimated``, with ``as_uploaded``:
    the loss and error of the uploaded state itself, its own running statistics included."""

    def evaluated(state: StateDict, stage_reporter: Reporter) -> LossError:
        loss, error = evaluate(
            arch, state, dataset, device=device, batch_size=batch_size, reporter=stage_reporter
        )
        return LossError(loss=loss, error=error)

    labelled = {}
    for index, (side, state) in enumerate(states.items()):
        measured = endpoints[side]
        if reestimated:
            stage_reporter = reporter.sub(index / len(states), 1 / len(states))
            as_uploaded = per_model.get(
                "as uploaded", state, partial(evaluated, state, stage_reporter)
            )
        else:
            # Nothing was re-estimated: the measured endpoints are the uploaded models.
            as_uploaded = measured
        labelled[side] = Endpoint(
            measured=measured, batch_norm_reestimated=reestimated, as_uploaded=as_uploaded
        )
    return labelled


__all__ = [
    "AnalysisConfig",
    "AnalysisData",
    "AnalysisResult",
    "analysis_data",
    "analyze_pair",
    "analyze_validated",
]
