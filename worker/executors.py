"""The job kinds, each a thin call into the engine: the job's inputs in, an
:class:`Outcome` out. Imported only in the worker child process (it loads torch).

Each runs under the job's float32 precision (``worker/execution.py`` sets it) and records it in
its result: ``settings.precision`` of an analysis, ``precision`` of the other kinds (a train
job's is that of its training steps, which may opt in to TF32)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.analysis.config import ANALYSIS_FIELDS
from llfc_core.analysis.sweep import analyze_sweep
from llfc_core.data import Dataset
from llfc_core.matching import match_models
from llfc_core.matching.ste import SteConfig
from llfc_core.merging import merge_many
from llfc_core.merging.averaging import repair_step
from llfc_core.merging.evaluation import evaluate_merge
from llfc_core.merging.feature_fit import DEFAULT_RIDGE
from llfc_core.params import DATA_MATCH_METHODS
from llfc_core.permutation import StateDict
from llfc_core.repair import default_repair_mode, interpolate_checkpoint
from llfc_core.training import evaluate, train_modes
from service.db.models import JobKind
from service.jobs import make_train_config
from worker.inputs import JobContext

MERGE_SHARE = 0.8
"""Share of a merge job's progress bar for merging; the rest is scoring the merged model."""
TRAIN_SHARE = 0.95
"""Share of a train job's progress bar for training; the rest is evaluating the modes."""
MIDPOINT_SHARE = 0.3
"""Share of a match job's progress bar for its repaired midpoint, when it has one."""


@dataclass
class Outcome:
    """What a finished job leaves: its result JSON and the state dicts to keep as checkpoints."""

    result: dict[str, Any]
    artifacts: list[tuple[str, StateDict]] = field(default_factory=list)
    with_layer_metrics: bool = False
    sweep_pairs: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    """A sweep's pairs: the positions of A and B in the job's models, and the pair's analyze
    result, stored as sweep_pairs rows."""


Executor = Callable[[JobContext], Outcome]


def run_match(context: JobContext) -> Outcome:
    params = context.job.params
    dataset = context.load_side_data()
    # Jobs queued before the parameter existed measured no midpoint.
    repair = params.get("repair", "none")
    match_share = 1.0 if repair == "none" or dataset is None else 1.0 - MIDPOINT_SHARE
    state_a = context.load_model(context.job.model_a_id)
    matched = match_models(
        context.arch,
        state_a,
        context.load_model(context.job.model_b_id),
        params["method"],
        dataset,
        seed=params["seed"],
        batch_size=params["batch_size"],
        # Jobs queued before the parameter existed matched by permutations.
        symmetry=params.get("symmetry", "permutation"),
        ste=SteConfig(params["epochs"], params["lr"]) if params["method"] == "ste" else None,
        device=context.device,
        reporter=context.reporter.sub(0.0, match_share),
    )
    result = {**matched.summary(), "precision": context.precision}
    if match_share < 1.0 and dataset is not None:
        midpoint_reporter = context.reporter.sub(match_share, 1.0 - match_share)
        midpoint = interpolate_checkpoint(
            context.arch,
            state_a,
            matched.permuted_b,
            0.5,
            dataset,
            repair,
            batch_size=params["batch_size"],
            device=context.device,
            reporter=midpoint_reporter.sub(0.0, 0.7),
        )
        loss, error = evaluate(
            context.arch,
            midpoint,
            dataset,
            device=context.device,
            batch_size=params["batch_size"],
            reporter=midpoint_reporter.sub(0.7, 0.3),
        )
        result["midpoint"] = {"repair": repair, "loss": loss, "error": error}
    return Outcome(result, [("model_b_permuted", matched.permuted_b)])


def run_interpolate(context: JobContext) -> Outcome:
    params = context.job.params
    bn_data = context.load_side_data()
    # Jobs queued before the parameter existed: the default (BatchNorm reset where there is data).
    repair = params.get("repair", default_repair_mode(context.arch))
    applied = repair if bn_data is not None else "none"
    mixed = interpolate_checkpoint(
        context.arch,
        context.load_model(context.job.model_a_id),
        context.load_model(context.job.model_b_id),
        params["alpha"],
        bn_data,
        applied,
        batch_size=params["batch_size"],
        device=context.device,
        reporter=context.reporter,
    )
    result = {
        "alpha": params["alpha"],
        "repair": applied,
        "batch_norm_reestimated": applied == "reset" and context.arch.has_batch_norm,
        "precision": context.precision,
    }
    return Outcome(result, [("interpolated", mixed)])


def _analysis_inputs(context: JobContext) -> tuple[AnalysisConfig, Dataset, Dataset | None]:
    """An analyze or sweep job's config, its data, and its training data when it needs some."""
    params = context.job.params
    # Jobs queued before a field existed (symmetry) take its default.
    config = AnalysisConfig.from_params(
        {key: params[key] for key in ANALYSIS_FIELDS if key in params}
    )
    dataset = context.load_dataset()
    # Matching on data and BatchNorm re-estimation use training data: the job's
    # train_dataset, else a built-in's train split, else (an upload) the data itself.
    needs_train_data = (
        config.match in DATA_MATCH_METHODS
        or context.arch.has_batch_norm
        or "repair" in config.repair_modes(context.arch.has_batch_norm)
    )
    train_dataset = None
    if needs_train_data:
        train_dataset = context.load_train_dataset()
        if train_dataset is None and context.uses_builtin_dataset and params["split"] != "train":
            train_dataset = context.load_dataset("train")
    return config, dataset, train_dataset


def run_analyze(context: JobContext) -> Outcome:
    config, dataset, train_dataset = _analysis_inputs(context)
    result = analyze_pair(
        context.arch,
        context.load_model(context.job.model_a_id),
        context.load_model(context.job.model_b_id),
        dataset,
        config,
        train_dataset=train_dataset,
        device=context.device,
        reporter=context.reporter,
    )
    measured = result.to_json()
    measured["settings"]["precision"] = context.precision
    return Outcome(measured, with_layer_metrics=True)


def run_sweep(context: JobContext) -> Outcome:
    """Every unordered pair of the job's models: the matrices in the result, each pair's
    analyze result in its sweep_pairs row."""
    config, dataset, train_dataset = _analysis_inputs(context)
    model_ids = context.job.model_ids or []
    sweep, pairs = analyze_sweep(
        context.arch,
        [context.load_model(model_id) for model_id in model_ids],
        dataset,
        config,
        names=model_ids,
        train_dataset=train_dataset,
        device=context.device,
        reporter=context.reporter,
    )
    result = sweep.to_json()
    result["settings"]["precision"] = context.precision
    analyses = []
    for pair in pairs:
        analysis = pair.analysis.to_json()
        analysis["settings"]["precision"] = context.precision
        analyses.append((pair.index_a, pair.index_b, analysis))
    return Outcome(result, sweep_pairs=analyses)


def _evaluations(context: JobContext, key: str, data: Dataset) -> dict[str, Dataset]:
    """``data`` under ``key`` and, when it is a built-in's train split, that built-in's test
    split under "test": what a merge or train job scores its models on."""
    evaluations = {key: data}
    if context.uses_builtin_dataset and context.job.params["split"] == "train":
        evaluations["test"] = context.load_dataset("test")
    return evaluations


def run_merge(context: JobContext) -> Outcome:
    """Merge the job's models into one checkpoint (``merged``), scored beside its inputs and
    the unmatched average on the data it was merged on, and on a built-in's test split."""
    params = context.job.params
    data = context.load_dataset()
    states = [context.load_model(model_id) for model_id in context.job.model_ids or []]
    repair = repair_step(
        context.arch,
        data,
        params["repair"],
        batch_size=params["batch_size"],
        device=context.device,
    )
    merged = merge_many(
        context.arch,
        states,
        data,
        method=params["method"],
        seed=params["seed"],
        batch_size=params["batch_size"],
        max_rounds=params["max_rounds"],
        ridge=params.get("ridge", DEFAULT_RIDGE),
        repair=repair,
        device=context.device,
        reporter=context.reporter.sub(0.0, MERGE_SHARE),
    )
    # Keyed by the split measured on: an upload is used whole as the training data ("train").
    evaluations = _evaluations(context, params["split"], data)
    scores = {}
    for index, (split, evaluation_data) in enumerate(evaluations.items()):
        share = (1.0 - MERGE_SHARE) / len(evaluations)
        scores[split] = evaluate_merge(
            context.arch,
            merged,
            states,
            evaluation_data,
            repair,
            batch_size=params["batch_size"],
            device=context.device,
            reporter=context.reporter.sub(MERGE_SHARE + index * share, share),
        ).to_json()
    result = {
        **merged.to_json(),
        "repair": params["repair"],
        "models": context.job.model_ids,
        "scores": scores,
        "precision": context.precision,
    }
    return Outcome(result, [("merged", merged.merged)])


def run_train(context: JobContext) -> Outcome:
    """Train the modes, then measure each on the training data (and a built-in's test split)."""
    params = context.job.params
    dataset = context.load_dataset()
    config = make_train_config(params)
    states = train_modes(
        context.arch,
        dataset,
        config,
        num_modes=params["num_modes"],
        device=context.device,
        reporter=context.reporter.sub(0.0, TRAIN_SHARE),
    )
    evaluations = _evaluations(context, "train", dataset)
    modes = []
    evaluation = context.reporter.sub(TRAIN_SHARE, 1.0 - TRAIN_SHARE)
    for index, state in enumerate(states):
        measured: dict[str, Any] = {"name": f"model_{index}"}
        for split, data in evaluations.items():
            loss, error = evaluate(context.arch, state, data, device=context.device)
            measured[f"{split}_loss"], measured[f"{split}_error"] = loss, error
        modes.append(measured)
        evaluation.report((index + 1) / len(states), "evaluating the trained modes")
    result = {"num_examples": dataset.num_examples, "modes": modes, "precision": config.precision}
    return Outcome(
        result, [(mode["name"], state) for mode, state in zip(modes, states, strict=True)]
    )


EXECUTORS: dict[JobKind, Executor] = {
    JobKind.MATCH: run_match,
    JobKind.INTERPOLATE: run_interpolate,
    JobKind.ANALYZE: run_analyze,
    JobKind.TRAIN: run_train,
    JobKind.SWEEP: run_sweep,
    JobKind.MERGE: run_merge,
}
