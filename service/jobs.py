"""Job business rules, in one place: what each kind takes, what is refused at submission, how a
job is cancelled and how it is shown.

A submission is checked completely before its row exists: A and B must share an arch, the
dataset must fit it, and every parameter must be valid, so incompatible inputs are refused
now (the engine's typed errors) instead of failing the job later. The params stored on the job
are the validated ones with their defaults filled in; the worker takes them as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llfc_core.analysis import AnalysisConfig
from llfc_core.analysis.sweep import check_sweep
from llfc_core.archs import Architecture, OnnxArchitecture, compare_onnx_archs, parse_arch
from llfc_core.data import dataset_probe, fit_to_arch
from llfc_core.errors import DatasetError, IncompatiblePairError, InvalidParameterError
from llfc_core.footprint import (
    MemoryEstimate,
    analysis_memory,
    interpolation_memory,
    match_memory,
    merge_memory,
    stored_checkpoint_bytes,
    sweep_memory,
    training_memory,
)
from llfc_core.interpolation import check_alpha
from llfc_core.matching.orthogonal import check_symmetry
from llfc_core.matching.ste import SteConfig
from llfc_core.merging import check_merge_params
from llfc_core.merging.feature_fit import DEFAULT_RIDGE
from llfc_core.params import (
    DATA_MATCH_METHODS,
    DEFAULT_BATCH_SIZE,
    MATCH_METHODS,
    MAX_BATCH_SIZE,
    MAX_SEED,
    check_int,
    named,
)
from llfc_core.repair import check_repair_mode, default_repair_mode, needs_data
from llfc_core.training import TrainConfig
from service import lifecycle
from service.checkpoints import checkpoint_arch
from service.core.config import Settings
from service.datasets import dataset_shape, is_builtin
from service.db.models import (
    FINISHED_STATUSES,
    Checkpoint,
    Job,
    JobArtifact,
    JobKind,
    JobStatus,
    new_id,
)
from service.errors import (
    AlreadyFinishedError,
    IdempotencyKeyReusedError,
    InvalidIdempotencyKeyError,
    NotFoundError,
)
from service.quotas import check_queued_jobs, check_stored_bytes
from service.routing import JobTraits, job_method, route_job
from service.schemas import ArtifactPublic, JobCreate, JobPublic, Progress
from service.storage import BlobStore, open_blob_store

DATA_KEYS = ("split", "max_examples")
TRAIN_DATASET_KEY = "train_dataset"
"""The pair jobs' param naming the data for BatchNorm re-estimation and activation matching."""
STE_KEYS = tuple(field.name for field in dataclasses.fields(SteConfig))
"""A match job's STE parameters (epochs, lr), accepted with method 'ste' only."""
TRAIN_CONFIG_KEYS = tuple(field.name for field in dataclasses.fields(TrainConfig))
TRAIN_KEYS = ("arch", "dataset", "num_modes", *TRAIN_CONFIG_KEYS)
MAX_IDEMPOTENCY_KEY_LENGTH = 200


@dataclass(frozen=True)
class JobPlan:
    """A submission after validation: what the job row will hold."""

    kind: JobKind
    params: dict[str, Any]
    arch: dict[str, Any] | None
    architecture: Architecture
    """``arch`` parsed (an ONNX arch with its graph): what the job's memory is estimated on."""
    model_a_id: str | None
    model_b_id: str | None
    dataset_ref: str | None
    train_dataset_ref: str | None = None
    model_ids: list[str] | None = None
    """The models of a job on N of them, in the order given."""


# --- Parameter checks ----------------------------------------------------------------------


def _refuse_unknown(kind: str, params: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InvalidParameterError(
            f"The {kind} job does not take the parameter(s) {named(unknown)}; "
            f"it takes {', '.join(sorted(allowed))}."
        )


def int_param(params: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    return check_int(params.get(key, default), low, high, f"The parameter '{key}'")


def _data_params(
    params: Mapping[str, Any], settings: Settings, default_split: str, dataset_ref: str | None
) -> dict[str, Any]:
    if "split" in params and dataset_ref is not None and not is_builtin(dataset_ref):
        raise InvalidParameterError(
            "The parameter 'split' applies only to built-in datasets; an uploaded dataset is "
            "used whole. Upload its train and test parts as two datasets and name the one to "
            "use instead."
        )
    split = params.get("split", default_split)
    if split not in ("train", "test"):
        raise InvalidParameterError(
            f"The parameter 'split' must be 'train' or 'test', got {split!r}."
        )
    max_examples = params.get("max_examples")
    if max_examples is not None:
        max_examples = int_param(params, "max_examples", 0, 1, settings.max_examples)
    return {"split": split, "max_examples": max_examples}


# --- Inputs --------------------------------------------------------------------------------


def _owned_checkpoint(
    session: Session, owner_id: str, field: str, checkpoint_id: str
) -> Checkpoint:
    checkpoint = session.get(Checkpoint, checkpoint_id)
    if checkpoint is None or checkpoint.owner_id != owner_id:
        raise InvalidParameterError(
            f"'{field}' names no checkpoint: {checkpoint_id!r} does not exist."
        )
    return checkpoint


def _refuse_different_archs(
    store: BlobStore,
    settings: Settings,
    first: Checkpoint,
    other: Checkpoint,
    which: str,
    every: str,
) -> None:
    """IncompatiblePairError when ``other``'s arch is not ``first``'s (for two ONNX graphs,
    the sentence says where they differ); ``which`` names the two models, ``every`` the
    models that must share the arch ("both", "all")."""
    if first.arch == other.arch:
        return
    if first.graph_blob_sha256 is not None and other.graph_blob_sha256 is not None:
        arch_first, arch_other = (
            checkpoint_arch(store, model, settings) for model in (first, other)
        )
        assert isinstance(arch_first, OnnxArchitecture)
        assert isinstance(arch_other, OnnxArchitecture)
        compare_onnx_archs(arch_first, arch_other)
    raise IncompatiblePairError(
        f"{which} have different archs ({json.dumps(first.arch)} and "
        f"{json.dumps(other.arch)}); {every} must be checkpoints of the same arch."
    )


def _model_pair(
    session: Session, owner_id: str, body: JobCreate, settings: Settings
) -> tuple[Checkpoint, Checkpoint, Architecture]:
    """Models A and B of the owner, which must have the same arch."""
    if body.models is not None:
        raise InvalidParameterError(
            f"{article(body.kind)} {body.kind} job takes two models, as 'model_a' and "
            "'model_b'; 'models' is for jobs on N models, such as sweep."
        )
    if not body.model_a or not body.model_b:
        raise InvalidParameterError(
            f"{article(body.kind)} {body.kind} job needs 'model_a' and 'model_b', two "
            "checkpoint ids."
        )
    model_a = _owned_checkpoint(session, owner_id, "model_a", body.model_a)
    model_b = _owned_checkpoint(session, owner_id, "model_b", body.model_b)
    store = open_blob_store(settings)
    _refuse_different_archs(store, settings, model_a, model_b, "Models A and B", "both")
    return model_a, model_b, checkpoint_arch(store, model_a, settings)


REPEATED_MODEL_REASONS = {
    JobKind.SWEEP: " (a model compared with itself is connected: its row of the matrices is zero).",
    JobKind.MERGE: " (a merge averages its models with equal weights).",
}
"""Why a kind needs each of its models once, added to the refusal of a repeated one."""


def model_set(
    session: Session, owner_id: str, body: JobCreate, settings: Settings
) -> tuple[list[Checkpoint], Architecture]:
    """The owner's checkpoints that ``body.models`` names, in its order, and their shared
    arch: 2 to ``LLFC_MAX_JOB_MODELS`` of them, each named once (a model twice would make a
    pair of a model with itself, whose numbers are known, and two rows of the matrices that
    say the same), all of one arch."""
    if body.model_a or body.model_b:
        raise InvalidParameterError(
            f"{article(body.kind)} {body.kind} job takes its checkpoints as 'models', a list "
            "of ids, not as 'model_a' and 'model_b'."
        )
    ids = body.models or []
    if not 2 <= len(ids) <= settings.max_job_models:
        raise InvalidParameterError(
            f"{article(body.kind)} {body.kind} job needs 'models', a list of 2 to "
            f"{settings.max_job_models} checkpoint ids on this service, got {len(ids)}."
        )
    repeated = sorted({checkpoint_id for checkpoint_id in ids if ids.count(checkpoint_id) > 1})
    if repeated:
        raise InvalidParameterError(
            f"'models' names {named(repeated)} more than once; name each model once"
            + REPEATED_MODEL_REASONS.get(body.kind, ".")
        )
    models = [
        _owned_checkpoint(session, owner_id, f"models[{index}]", checkpoint_id)
        for index, checkpoint_id in enumerate(ids)
    ]
    store = open_blob_store(settings)
    first = models[0]
    for other in models[1:]:
        _refuse_different_archs(
            store, settings, first, other, f"Models {first.id} and {other.id}", "all"
        )
    return models, checkpoint_arch(store, first, settings)


def _fitting_dataset(
    session: Session,
    settings: Settings,
    owner_id: str,
    ref: str | None,
    arch: Architecture,
    purpose: str,
) -> str:
    """The dataset reference, after checking that it exists (a built-in: that it is installed)
    and that its examples fit ``arch``.

    The check runs the engine's own ``fit_to_arch`` on one example of the dataset's shape and
    kind holding its largest label (or token), so submission and execution apply the same rule
    without loading data.
    """
    if not ref:
        raise DatasetError(
            f"This job needs a 'dataset' {purpose}: an uploaded dataset id or e.g. "
            "'builtin:digits'."
        )
    shape = dataset_shape(session, owner_id, ref, settings.resolved_datasets_root)
    fit_to_arch(arch, dataset_probe(shape.input_shape, shape.num_classes, shape.kind, ref))
    return ref


def _train_dataset(
    session: Session,
    settings: Settings,
    owner_id: str,
    params: Mapping[str, Any],
    arch: Architecture,
) -> dict[str, Any]:
    """``{"train_dataset": ref}`` when a pair job names one (checked as its 'dataset' is), else
    nothing."""
    if params.get(TRAIN_DATASET_KEY) is None:
        return {}
    ref = params[TRAIN_DATASET_KEY]
    if not isinstance(ref, str) or not ref:
        raise InvalidParameterError(
            f"The parameter 'train_dataset' must be a dataset id or e.g. 'builtin:digits', "
            f"got {ref!r}."
        )
    return {TRAIN_DATASET_KEY: _fitting_dataset(session, settings, owner_id, ref, arch, "")}


def _side_dataset(
    session: Session,
    settings: Settings,
    owner_id: str,
    body: JobCreate,
    arch: Architecture,
    train_data: Mapping[str, Any],
    needed_for: str | None,
) -> str | None:
    """The 'dataset' of a match or interpolate job, checked as :func:`_fitting_dataset` does:
    required when ``needed_for`` says what for and no 'train_dataset' stands in, optional
    otherwise (None when not given)."""
    if (needed_for and not train_data) or body.dataset:
        return _fitting_dataset(session, settings, owner_id, body.dataset, arch, needed_for or "")
    return None


def _pair_plan(
    kind: JobKind,
    params: dict[str, Any],
    arch: Architecture,
    model_a: Checkpoint,
    model_b: Checkpoint,
    dataset_ref: str | None,
    train_data: Mapping[str, Any],
) -> JobPlan:
    """The plan of a job on models A and B (their shared arch is A's)."""
    return JobPlan(
        kind,
        params,
        model_a.arch,
        arch,
        model_a.id,
        model_b.id,
        dataset_ref,
        train_data.get(TRAIN_DATASET_KEY),
    )


def _models_plan(
    kind: JobKind,
    params: dict[str, Any],
    arch: Architecture,
    models: list[Checkpoint],
    dataset_ref: str,
    train_data: Mapping[str, Any],
) -> JobPlan:
    """The plan of a job on N models (their shared arch is the first's)."""
    return JobPlan(
        kind,
        params,
        models[0].arch,
        arch,
        None,
        None,
        dataset_ref,
        train_data.get(TRAIN_DATASET_KEY),
        [model.id for model in models],
    )


# --- Kinds ---------------------------------------------------------------------------------


def _plan_match(session: Session, owner_id: str, body: JobCreate, settings: Settings) -> JobPlan:
    _refuse_unknown(
        "match",
        body.params,
        (
            "method",
            "symmetry",
            "seed",
            "batch_size",
            "repair",
            *STE_KEYS,
            TRAIN_DATASET_KEY,
            *DATA_KEYS,
        ),
    )
    model_a, model_b, arch = _model_pair(session, owner_id, body, settings)
    method = body.params.get("method", "weight")
    if method not in MATCH_METHODS:
        raise InvalidParameterError(
            f"The parameter 'method' must be one of {', '.join(map(repr, MATCH_METHODS))}, "
            f"got {method!r}."
        )
    ste_params = {key: body.params[key] for key in STE_KEYS if key in body.params}
    if ste_params and method != "ste":
        raise InvalidParameterError(
            f"The parameter(s) {named(sorted(ste_params))} set STE matching's training; "
            f'method {method!r} takes none. Use "method": "ste" or leave them out.'
        )
    symmetry = body.params.get("symmetry", "permutation")
    check_symmetry(arch.symmetry(), symmetry)
    repair = check_repair_mode(body.params.get("repair", "none"))
    train_data = _train_dataset(session, settings, owner_id, body.params, arch)
    needed_for = (
        f"for {method} matching"
        if method in DATA_MATCH_METHODS
        else "to measure the repaired midpoint on"
        if repair != "none"
        else None
    )
    dataset_ref = _side_dataset(session, settings, owner_id, body, arch, train_data, needed_for)
    params = {
        "method": method,
        "symmetry": symmetry,
        "repair": repair,
        "seed": int_param(body.params, "seed", 0, 0, MAX_SEED),
        "batch_size": int_param(body.params, "batch_size", DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE),
        **(dataclasses.asdict(SteConfig(**ste_params)) if method == "ste" else {}),
        **_data_params(body.params, settings, "train", dataset_ref),
        **train_data,
    }
    return _pair_plan(JobKind.MATCH, params, arch, model_a, model_b, dataset_ref, train_data)


def _plan_interpolate(
    session: Session, owner_id: str, body: JobCreate, settings: Settings
) -> JobPlan:
    _refuse_unknown(
        "interpolate",
        body.params,
        ("alpha", "batch_size", "repair", TRAIN_DATASET_KEY, *DATA_KEYS),
    )
    model_a, model_b, arch = _model_pair(session, owner_id, body, settings)
    alpha = check_alpha(body.params.get("alpha", 0.5))
    repair = check_repair_mode(body.params.get("repair", default_repair_mode(arch)))
    train_data = _train_dataset(session, settings, owner_id, body.params, arch)
    needed_for = (
        None
        if not needs_data(arch, repair)
        else "to measure REPAIR's statistics on"
        if repair == "repair"
        else "to re-estimate BatchNorm statistics on"
    )
    dataset_ref = _side_dataset(session, settings, owner_id, body, arch, train_data, needed_for)
    params = {
        "alpha": alpha,
        "repair": repair,
        "batch_size": int_param(body.params, "batch_size", DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE),
        **_data_params(body.params, settings, "train", dataset_ref),
        **train_data,
    }
    return _pair_plan(JobKind.INTERPOLATE, params, arch, model_a, model_b, dataset_ref, train_data)


def _analysis_config(body: JobCreate, settings: Settings) -> AnalysisConfig:
    config = AnalysisConfig.from_params(body.params)
    if len(config.alphas) > settings.max_alphas:
        raise InvalidParameterError(
            f"'alphas' may hold at most {settings.max_alphas} values on this service, "
            f"got {len(config.alphas)}."
        )
    return config


def _analysis_inputs(
    session: Session,
    owner_id: str,
    body: JobCreate,
    settings: Settings,
    config: AnalysisConfig,
    arch: Architecture,
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """An analysis's params as stored, its dataset and its train data (checked against
    ``arch``), for analyze and sweep jobs alike."""
    config.check_layers(arch.feature_layers())
    check_symmetry(arch.symmetry(), config.symmetry)
    dataset_ref = _fitting_dataset(session, settings, owner_id, body.dataset, arch, "to analyse on")
    train_data = _train_dataset(session, settings, owner_id, body.params, arch)
    params = {
        **analysis_params(config),
        **_data_params(body.params, settings, "test", dataset_ref),
        **train_data,
    }
    return params, dataset_ref, train_data


def _plan_analyze(session: Session, owner_id: str, body: JobCreate, settings: Settings) -> JobPlan:
    config = _analysis_config(body, settings)
    model_a, model_b, arch = _model_pair(session, owner_id, body, settings)
    params, dataset_ref, train_data = _analysis_inputs(
        session, owner_id, body, settings, config, arch
    )
    return _pair_plan(JobKind.ANALYZE, params, arch, model_a, model_b, dataset_ref, train_data)


def _plan_sweep(session: Session, owner_id: str, body: JobCreate, settings: Settings) -> JobPlan:
    config = _analysis_config(body, settings)
    models, arch = model_set(session, owner_id, body, settings)
    check_sweep(config, len(models))
    params, dataset_ref, train_data = _analysis_inputs(
        session, owner_id, body, settings, config, arch
    )
    return _models_plan(JobKind.SWEEP, params, arch, models, dataset_ref, train_data)


MERGE_KEYS = ("method", "repair", "seed", "batch_size", "max_rounds", "ridge")


def _plan_merge(session: Session, owner_id: str, body: JobCreate, settings: Settings) -> JobPlan:
    _refuse_unknown("merge", body.params, (*MERGE_KEYS, *DATA_KEYS))
    models, arch = model_set(session, owner_id, body, settings)
    method = body.params.get("method", "weight_average")
    max_rounds = body.params.get("max_rounds", 100)
    if "ridge" in body.params and method != "feature_average":
        raise InvalidParameterError(
            "The parameter 'ridge' regularises feature averaging's least squares; "
            f'method {method!r} fits nothing. Use "method": "feature_average" or leave it out.'
        )
    ridge = body.params.get("ridge", DEFAULT_RIDGE)
    check_merge_params(method, max_rounds, ridge)
    dataset_ref = _fitting_dataset(
        session, settings, owner_id, body.dataset, arch, "to match, repair and fit the merge on"
    )
    params = {
        "method": method,
        "repair": check_repair_mode(body.params.get("repair", default_repair_mode(arch))),
        "seed": int_param(body.params, "seed", 0, 0, MAX_SEED),
        "batch_size": int_param(body.params, "batch_size", DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE),
        "max_rounds": max_rounds,
        **({"ridge": ridge} if method == "feature_average" else {}),
        **_data_params(body.params, settings, "train", dataset_ref),
    }
    return _models_plan(JobKind.MERGE, params, arch, models, dataset_ref, {})


def article(word: str) -> str:
    return "An" if word[:1] in "aeiou" else "A"


def analysis_params(config: AnalysisConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    return {key: list(v) if isinstance(v, tuple) else v for key, v in values.items()}


def _plan_train(session: Session, owner_id: str, body: JobCreate, settings: Settings) -> JobPlan:
    _refuse_unknown("train", body.params, (*TRAIN_KEYS, *DATA_KEYS))
    if body.model_a or body.model_b or body.models is not None:
        raise InvalidParameterError(
            "A train job takes no 'model_a', 'model_b' or 'models'; it trains new models of "
            "'params.arch'."
        )
    if "arch" not in body.params:
        raise InvalidParameterError(
            'A train job needs \'params.arch\', e.g. {"name": "mlp", "widths": [64, 128, 10]}.'
        )
    arch = parse_arch(body.params["arch"], max_params=settings.max_params)
    if body.dataset and body.params.get("dataset") not in (None, body.dataset):
        raise InvalidParameterError(
            "Give the training data once, as 'dataset' or as 'params.dataset', not both."
        )
    dataset_ref = _fitting_dataset(
        session,
        settings,
        owner_id,
        body.dataset or body.params.get("dataset"),
        arch,
        "to train on",
    )
    train_config = make_train_config(body.params)
    if train_config.epochs > settings.max_epochs:
        raise InvalidParameterError(
            f"'epochs' may be at most {settings.max_epochs} on this service, "
            f"got {train_config.epochs}."
        )
    params = {
        "arch": arch.to_json(),
        "dataset": dataset_ref,
        "num_modes": int_param(body.params, "num_modes", 2, 1, settings.max_modes),
        **train_params(train_config),
        **_data_params(body.params, settings, "train", dataset_ref),
    }
    return JobPlan(JobKind.TRAIN, params, arch.to_json(), arch, None, None, dataset_ref)


def make_train_config(params: Mapping[str, Any]) -> TrainConfig:
    """The engine's TrainConfig from job params; it validates them (InvalidParameterError)."""
    return TrainConfig(**{key: params[key] for key in TRAIN_CONFIG_KEYS if key in params})


def train_params(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


PLANNERS: dict[JobKind, Callable[[Session, str, JobCreate, Settings], JobPlan]] = {
    JobKind.MATCH: _plan_match,
    JobKind.INTERPOLATE: _plan_interpolate,
    JobKind.ANALYZE: _plan_analyze,
    JobKind.TRAIN: _plan_train,
    JobKind.SWEEP: _plan_sweep,
    JobKind.MERGE: _plan_merge,
}


# --- Submission ------------------------------------------------------------------------------


def job_memory(plan: JobPlan, arch: Architecture) -> MemoryEstimate:
    """The engine's estimate of the job's peak memory."""
    params = plan.params
    if plan.kind == JobKind.MATCH:
        return match_memory(arch, params["method"], params["batch_size"], params["repair"])
    if plan.kind == JobKind.INTERPOLATE:
        with_data = plan.dataset_ref is not None or params.get(TRAIN_DATASET_KEY) is not None
        return interpolation_memory(arch, params["batch_size"], with_data, params["repair"])
    if plan.kind in (JobKind.ANALYZE, JobKind.SWEEP):
        config = AnalysisConfig.from_params(params)
        repair = config.repair_modes(arch.has_batch_norm)[0]
        if plan.kind == JobKind.ANALYZE:
            return analysis_memory(arch, config.batch_size, config.match, config.all_alphas, repair)
        assert plan.model_ids is not None
        num_models = len(plan.model_ids)
        return sweep_memory(
            arch, config.batch_size, config.match, config.all_alphas, num_models, repair
        )
    if plan.kind == JobKind.MERGE:
        assert plan.model_ids is not None
        num_models = len(plan.model_ids)
        return merge_memory(arch, params["method"], params["batch_size"], num_models)
    return training_memory(arch, params["batch_size"], params["num_modes"])


def output_checkpoints(plan: JobPlan) -> int:
    """How many checkpoints the job stores at most, which its storage reservation counts."""
    if plan.kind == JobKind.TRAIN:
        return int(plan.params["num_modes"])
    return 1 if plan.kind in (JobKind.MATCH, JobKind.INTERPOLATE, JobKind.MERGE) else 0


def request_hash(body: JobCreate) -> str:
    """sha256 of the canonical JSON of a submission: equal bodies give equal hashes."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(session: Session, owner_id: str, key: str, body_hash: str) -> Job | None:
    """The job an earlier request with this Idempotency-Key created, if its body was the same."""
    job = session.scalar(select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key))
    if job is not None and job.request_hash != body_hash:
        raise IdempotencyKeyReusedError(
            f"The Idempotency-Key {key!r} was already used for job {job.id} with a different "
            "request body; send a new key for a new job."
        )
    return job


def submit_job(
    session: Session,
    settings: Settings,
    owner_id: str,
    body: JobCreate,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """Validate and commit a job; returns (job, created). Publishing is the caller's next step.

    With an Idempotency-Key, the same key and body return the job made the first time (even
    when the owner's quotas are full now). A new job is refused when the engine estimates
    it needs more memory than ``LLFC_MAX_JOB_MEMORY_BYTES`` (JobTooLargeError), and past the
    owner's quotas: too many queued jobs, or checkpoints it may store that do not fit (they are
    reserved in ``reserved_bytes`` until the job ends); see ``service/quotas.py``.
    """
    body_hash = request_hash(body)
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
            raise InvalidIdempotencyKeyError(
                f"The Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters long."
            )
        existing = _replay(session, owner_id, idempotency_key, body_hash)
        if existing is not None:
            session.commit()
            return existing, False
    plan = PLANNERS[body.kind](session, owner_id, body, settings)
    assert plan.arch is not None  # every kind's planner names the arch
    arch = plan.architecture
    memory = job_memory(plan, arch)
    memory.refuse_above(settings.max_job_memory_bytes)
    method = job_method(plan.kind, plan.params)
    traits = JobTraits(plan.kind, method, arch.num_params(), memory.total)
    check_queued_jobs(session, settings, owner_id)
    reserved = output_checkpoints(plan) * stored_checkpoint_bytes(arch)
    if reserved:
        check_stored_bytes(
            session,
            settings,
            owner_id,
            reserved,
            f"the checkpoints this {plan.kind} job makes ({reserved:,} bytes at most)",
        )
    job = lifecycle.queued_job(
        id=new_id("job"),
        owner_id=owner_id,
        kind=plan.kind,
        queue=route_job(settings.queue_routes, traits),
        idempotency_key=idempotency_key,
        request_hash=body_hash,
        params=plan.params,
        arch=plan.arch,
        model_a_id=plan.model_a_id,
        model_b_id=plan.model_b_id,
        model_ids=plan.model_ids,
        dataset_ref=plan.dataset_ref,
        train_dataset_ref=plan.train_dataset_ref,
        reserved_bytes=reserved,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same key committed first.
        session.rollback()
        if idempotency_key is None:
            raise
        existing = _replay(session, owner_id, idempotency_key, body_hash)
        if existing is None:
            raise
        session.commit()
        return existing, False
    return job, True


# --- Reading and cancelling --------------------------------------------------------------------


def get_owned_job(session: Session, owner_id: str, job_id: str) -> Job:
    """The owner's job; NotFoundError also for another owner's."""
    job = session.get(Job, job_id)
    if job is None or job.owner_id != owner_id:
        raise NotFoundError("job", job_id)
    return job


def owned_jobs(session: Session, owner_id: str, job_ids: Sequence[str]) -> list[Job]:
    """The owner's jobs among ``job_ids``, in that order; other owners' and unknown ids are
    left out, alike."""
    found = {
        job.id: job
        for job in session.scalars(
            select(Job).where(Job.owner_id == owner_id, Job.id.in_(list(job_ids)))
        )
    }
    return [found[job_id] for job_id in job_ids if job_id in found]


def cancel_job(session: Session, job: Job) -> Job:
    """Cancel: a queued job ends ``cancelled`` now and never runs; a running one is asked to
    stop at its next batch. Cancelling a cancelled job is a no-op; a succeeded or failed one
    raises AlreadyFinishedError."""
    lifecycle.cancel(session, job.id)
    session.refresh(job)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise AlreadyFinishedError(
            f"Job {job.id} already {job.status}; there is nothing to cancel."
        )
    return job


def is_finished(job: Job) -> bool:
    return job.status in FINISHED_STATUSES


def job_public(session: Session, job: Job) -> JobPublic:
    return jobs_public(session, [job])[0]


def jobs_public(session: Session, jobs: Sequence[Job]) -> list[JobPublic]:
    """Jobs as the API shows them, their artifacts read in one query."""
    artifacts: dict[str, list[JobArtifact]] = {job.id: [] for job in jobs}
    for artifact in session.scalars(
        select(JobArtifact).where(JobArtifact.job_id.in_(list(artifacts))).order_by(JobArtifact.id)
    ):
        artifacts[artifact.job_id].append(artifact)
    return [public_job(job, artifacts[job.id]) for job in jobs]


def public_job(job: Job | Row[Any], artifacts: Sequence[JobArtifact | Row[Any]]) -> JobPublic:
    """A job as the API shows it, from its ORM object or a row of its table's columns (the
    poll's, :mod:`service.polls`), with its artifacts."""
    return JobPublic(
        id=job.id,
        kind=job.kind,
        queue=job.queue,
        status=job.status,
        progress=Progress(fraction=job.progress_fraction, stage=job.progress_stage),
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        result=job.result,
        artifacts=[
            ArtifactPublic(name=a.name, checkpoint_id=a.checkpoint_id, url=a.url) for a in artifacts
        ],
        model_a=job.model_a_id,
        model_b=job.model_b_id,
        models=job.model_ids,
        dataset=job.dataset_ref,
        params=job.params,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
    )
