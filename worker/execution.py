"""Running one job in the worker: claim it, report into its row, finish it. Imported only in the
worker child process (it loads torch).

The claim takes the job's lease (``service/leases.py``): a duplicate delivery of the message, or
a job cancelled while queued, does nothing, and while the job runs the worker's main process
keeps the lease fresh (``worker/leases.py``: this process may hold the GIL for minutes). Every
write of the run is conditional on still holding the lease, so a run that lost it (the job was
taken back) changes nothing and stops at its next progress report. Progress and the
cancellation flag go through the database, throttled, so a long job neither floods it nor
misses a cancel by more than a batch and a poll interval. A failure is stored as a sentence; its
traceback goes to the logs only.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select, update

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import Architecture, parse_arch
from llfc_core.checkpoints import load_safetensors
from llfc_core.data import Dataset, fit_to_arch, load_builtin, open_normalised, read_arrays
from llfc_core.device import resolve_device
from llfc_core.errors import CancelledError, DatasetError, LLFCError
from llfc_core.interpolation import interpolate_checkpoint
from llfc_core.matching import match_models
from llfc_core.permutation import StateDict
from llfc_core.progress import Reporter
from llfc_core.training import evaluate, train_modes
from service.checkpoints import store_artifact
from service.core.config import Settings, get_settings
from service.datasets import BUILTIN_PREFIX, is_builtin
from service.db.models import Checkpoint, Job, JobArtifact, LayerMetric, utcnow
from service.db.models import Dataset as DatasetRow
from service.db.session import rows_changed, session_scope
from service.jobs import make_train_config
from service.leases import claim_job, holds_lease, soft_time_limit_sentence, worker_token
from service.queue import publish_waiting_jobs
from service.results import json_safe, layer_metric_rows
from service.storage import BlobStore

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5
CANCEL_POLL_INTERVAL_S = 0.5
INTERNAL_FAILURE = (
    "The job failed because of an internal error; the operators can find the details in the "
    "worker logs."
)
ANALYSIS_KEYS = ("alphas", "llfc_alphas", "match", "batch_size", "reset_bn", "seed")
TRAIN_SHARE = 0.95
"""Share of a train job's progress bar for training; the rest is evaluating the modes."""


@dataclass
class Outcome:
    """What a finished job leaves: its result JSON and the state dicts to keep as checkpoints."""

    result: dict[str, Any]
    artifacts: list[tuple[str, StateDict]] = field(default_factory=list)
    with_layer_metrics: bool = False


@dataclass
class JobContext:
    """Everything an executor needs: the job as claimed, its inputs' locations, a reporter."""

    job: Job
    arch: Architecture
    settings: Settings
    store: BlobStore
    reporter: Reporter
    device: torch.device

    def load_model(self, checkpoint_id: str | None) -> StateDict:
        assert checkpoint_id is not None
        with session_scope() as session:
            checkpoint = session.get(Checkpoint, checkpoint_id)
            if checkpoint is None:
                raise LLFCError(f"The checkpoint {checkpoint_id} was deleted before the job ran.")
            blob = checkpoint.blob_sha256
        return load_safetensors(self.store.path_for(blob))

    def load_dataset(self, split: str | None = None) -> Dataset:
        """The job's dataset (a built-in's ``split``, an upload whole), limited and fitted."""
        if self.job.dataset_ref is None:
            raise DatasetError("This job has no dataset.")
        return self._load(self.job.dataset_ref, split or self.job.params.get("split", "train"))

    def load_train_dataset(self) -> Dataset | None:
        """The job's ``train_dataset`` (a built-in's train split, an upload whole), limited and
        fitted; None when the job names none."""
        ref = self.job.train_dataset_ref
        return None if ref is None else self._load(ref, "train")

    def load_side_data(self) -> Dataset | None:
        """The data for BatchNorm re-estimation and activation matching of a match or
        interpolate job: its ``train_dataset``, else its dataset, else None."""
        train_dataset = self.load_train_dataset()
        if train_dataset is not None or self.job.dataset_ref is None:
            return train_dataset
        return self.load_dataset()

    def _load(self, ref: str, split: str) -> Dataset:
        requested = self.job.params.get("max_examples") or self.settings.max_examples
        max_examples = min(requested, self.settings.max_examples)
        if is_builtin(ref):
            builtin = load_builtin(
                ref[len(BUILTIN_PREFIX) :], split, root=self.settings.resolved_datasets_root
            )
            return fit_to_arch(self.arch, builtin.limit(max_examples))
        with session_scope() as session:
            row = session.get(DatasetRow, ref)
            if row is None:
                raise DatasetError(f"The dataset {ref} was deleted before the job ran.")
            upload_sha256, normalised_sha256 = row.sha256, row.blob_sha256
        if normalised_sha256 is not None:
            # Only the examples the job uses are read: the rest stay on disk, unmapped.
            dataset = open_normalised(self.store.path_for(normalised_sha256), max_examples, ref)
        else:
            # A row from before normalised copies: its upload, read whole, then limited.
            dataset = read_arrays(
                self.store.path_for(upload_sha256),
                self.settings.max_upload_bytes,
                self.settings.max_dataset_expansion,
            ).limit(max_examples)
        return fit_to_arch(self.arch, dataset)

    @property
    def uses_builtin_dataset(self) -> bool:
        return bool(self.job.dataset_ref and is_builtin(self.job.dataset_ref))


Executor = Callable[[JobContext], Outcome]


# --- The four kinds ------------------------------------------------------------------------


def run_match(context: JobContext) -> Outcome:
    params = context.job.params
    dataset = context.load_side_data()
    matched = match_models(
        context.arch,
        context.load_model(context.job.model_a_id),
        context.load_model(context.job.model_b_id),
        params["method"],
        dataset,
        seed=params["seed"],
        batch_size=params["batch_size"],
        device=context.device,
        reporter=context.reporter,
    )
    return Outcome(matched.summary(), [("model_b_permuted", matched.permuted_b)])


def run_interpolate(context: JobContext) -> Outcome:
    params = context.job.params
    bn_data = context.load_side_data()
    mixed = interpolate_checkpoint(
        context.arch,
        context.load_model(context.job.model_a_id),
        context.load_model(context.job.model_b_id),
        params["alpha"],
        bn_data,
        batch_size=params["batch_size"],
        device=context.device,
        reporter=context.reporter,
    )
    result = {
        "alpha": params["alpha"],
        "batch_norm_reestimated": bool(context.arch.has_batch_norm and bn_data is not None),
    }
    return Outcome(result, [("interpolated", mixed)])


def run_analyze(context: JobContext) -> Outcome:
    params = context.job.params
    config = AnalysisConfig.from_params({key: params[key] for key in ANALYSIS_KEYS})
    dataset = context.load_dataset()
    # Activation matching and BatchNorm re-estimation use training data: the job's
    # train_dataset, else a built-in's train split, else (an upload) the data itself.
    needs_train_data = config.match == "activation" or context.arch.has_batch_norm
    train_dataset = None
    if needs_train_data:
        train_dataset = context.load_train_dataset()
        if train_dataset is None and context.uses_builtin_dataset and params["split"] != "train":
            train_dataset = context.load_dataset("train")
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
    return Outcome(result, with_layer_metrics=True)


def run_train(context: JobContext) -> Outcome:
    """Train the modes, then measure each on the training data (and a built-in's test split)."""
    params = context.job.params
    dataset = context.load_dataset()
    states = train_modes(
        context.arch,
        dataset,
        make_train_config(params),
        num_modes=params["num_modes"],
        device=context.device,
        reporter=context.reporter.sub(0.0, TRAIN_SHARE),
    )
    evaluations = {"train": dataset}
    if context.uses_builtin_dataset and params["split"] == "train":
        evaluations["test"] = context.load_dataset("test")
    modes = []
    evaluation = context.reporter.sub(TRAIN_SHARE, 1.0 - TRAIN_SHARE)
    for index, state in enumerate(states):
        measured: dict[str, Any] = {"name": f"model_{index}"}
        for split, data in evaluations.items():
            loss, error = evaluate(context.arch, state, data, device=context.device)
            measured[f"{split}_loss"], measured[f"{split}_error"] = loss, error
        modes.append(measured)
        evaluation.report((index + 1) / len(states), "evaluating the trained modes")
    result = {"num_examples": dataset.num_examples, "modes": modes}
    return Outcome(
        result, [(mode["name"], state) for mode, state in zip(modes, states, strict=True)]
    )


# --- The job's life in the database -----------------------------------------------------------


class JobRun:
    """The database side of one run (one attempt) of a job."""

    def __init__(self, job_id: str, settings: Settings) -> None:
        self.job_id = job_id
        self.settings = settings
        self.attempt = 0
        self.lease_lost = False
        self.timed_out = False
        self._claimed_at = 0.0
        self._last_progress_write = 0.0
        self._last_stage = ""
        self._last_cancel_poll = 0.0
        self._cancel_seen = False

    def claim(self) -> Job | None:
        """Take the job's lease (see ``service/leases.py``); None if it is not takeable."""
        with session_scope() as session:
            job = claim_job(session, self.job_id, worker_token(), self.settings)
            if job is None:
                return None
            session.expunge(job)
        self.attempt = job.attempts
        self._claimed_at = time.monotonic()
        return job

    def _held(self) -> Any:
        return holds_lease(self.job_id, self.attempt)

    def on_progress(self, fraction: float, stage: str) -> None:
        """Write progress at most every PROGRESS_INTERVAL_S, or at once when the stage changes."""
        moment = time.monotonic()
        if stage == self._last_stage and moment - self._last_progress_write < PROGRESS_INTERVAL_S:
            return
        self._last_progress_write, self._last_stage = moment, stage
        with session_scope() as session:
            session.execute(
                update(Job)
                .where(self._held())
                .values(
                    progress_fraction=min(max(fraction, 0.0), 1.0),
                    progress_stage=stage[:200],
                    heartbeat_at=utcnow(),
                ),
            )

    def should_stop(self) -> bool:
        """Whether the run must stop: its soft time limit passed, it lost its lease, or a cancel
        was requested (read at most every CANCEL_POLL_INTERVAL_S).

        The time limit is checked here as well as by Celery's SoftTimeLimitExceeded, which is
        raised from a signal handler in whatever code runs at that moment, and is lost when
        that is a garbage collector callback; this check cannot be missed.
        """
        soft_limit = self.settings.job_soft_time_limit_seconds
        if soft_limit and time.monotonic() - self._claimed_at > soft_limit:
            self.timed_out = True
            return True
        if self.lease_lost:
            return True
        moment = time.monotonic()
        if self._cancel_seen or moment - self._last_cancel_poll < CANCEL_POLL_INTERVAL_S:
            return self._cancel_seen
        self._last_cancel_poll = moment
        with session_scope() as session:
            row = session.execute(
                select(Job.cancel_requested, Job.status, Job.attempts).where(Job.id == self.job_id)
            ).one_or_none()
        if row is None or row.status != "running" or row.attempts != self.attempt:
            logger.warning("Job %s attempt %d no longer holds its lease", self.job_id, self.attempt)
            self.lease_lost = True
            return True
        self._cancel_seen = bool(row.cancel_requested)
        return self._cancel_seen

    def _finish(self, status: str, **values: Any) -> bool:
        now = utcnow()
        with session_scope() as session:
            job = session.get(Job, self.job_id)
            run_seconds = (now - job.started_at).total_seconds() if job and job.started_at else None
            statement = (
                update(Job)
                .where(self._held())
                .values(status=status, finished_at=now, run_seconds=run_seconds, **values)
            )
            return rows_changed(session, statement) == 1

    def fail(self, message: str) -> None:
        self._finish("failed", error=message, progress_stage="failed")

    def cancelled(self) -> None:
        self._finish("cancelled", progress_stage="cancelled")

    def succeed(self, job: Job, outcome: Outcome, store: BlobStore, arch: Architecture) -> None:
        """Store artifacts, result and metric rows, and mark the job succeeded, in one commit."""
        now = utcnow()
        result = json_safe(outcome.result)
        with session_scope() as session:
            for name, state in outcome.artifacts:
                checkpoint = store_artifact(
                    session, store, job.owner_id, arch, state, f"{name} of {job.id}", job.id
                )
                session.add(JobArtifact(job_id=job.id, name=name, checkpoint_id=checkpoint.id))
            if outcome.with_layer_metrics:
                session.add_all(
                    LayerMetric(job_id=job.id, **dataclasses.asdict(row))
                    for row in layer_metric_rows(result)
                )
            started = job.started_at or now
            finished = rows_changed(
                session,
                update(Job)
                .where(self._held())
                .values(
                    status="succeeded",
                    result=result,
                    finished_at=now,
                    run_seconds=(now - started).total_seconds(),
                    progress_fraction=1.0,
                    progress_stage="done",
                ),
            )
            if not finished:
                # The run lost its lease meanwhile (the job was taken back): keep nothing.
                session.rollback()
                logger.warning("Job %s no longer held its lease at its end; result dropped", job.id)


def run_job(job_id: str, execute: Executor, redelivered: bool = False) -> None:
    """Claim ``job_id`` and run ``execute`` on it, recording how it ended.

    ``redelivered``: the broker marked the message as handed out before (only logged).
    """
    settings = get_settings()
    run = JobRun(job_id, settings)
    job = run.claim()
    if job is None:
        logger.info(
            "Job %s is not queued (a duplicate delivery%s, a run elsewhere holds it, it was "
            "cancelled, or its owner runs the most jobs allowed at once); skipped",
            job_id,
            ", redelivered by the broker" if redelivered else "",
        )
        return
    store = BlobStore(settings.blob_dir)
    logger.info("Job %s (%s) started, attempt %d", job_id, job.kind, job.attempts)
    try:
        assert job.arch is not None
        context = JobContext(
            job=job,
            arch=parse_arch(job.arch, max_params=settings.max_params),
            settings=settings,
            store=store,
            reporter=Reporter(callback=run.on_progress, should_stop=run.should_stop),
            device=resolve_device(settings.device),
        )
        outcome = execute(context)
        run.succeed(job, outcome, store, context.arch)
    except SoftTimeLimitExceeded:
        logger.info("Job %s reached its soft time limit", job_id)
        run.fail(soft_time_limit_sentence(settings.job_soft_time_limit_seconds))
    except CancelledError:
        if run.timed_out:
            logger.info("Job %s reached its soft time limit", job_id)
            run.fail(soft_time_limit_sentence(settings.job_soft_time_limit_seconds))
        else:
            logger.info("Job %s cancelled or lost its lease", job_id)
            run.cancelled()
    except LLFCError as error:
        logger.info("Job %s failed: %s", job_id, error.message)
        run.fail(error.message)
    except Exception:
        logger.exception("Job %s failed with an internal error", job_id)
        run.fail(INTERNAL_FAILURE)
    else:
        logger.info("Job %s succeeded", job_id)
    wake_waiting_jobs(job_id, settings)


def wake_waiting_jobs(ended_job_id: str, settings: Settings) -> None:
    """Publish the jobs of the ended job's owner that wait for the running-job slot it freed.

    A failure is only logged: the republisher sends them later.
    """
    try:
        with session_scope() as session:
            publish_waiting_jobs(session, settings, ended_job_id)
    except Exception:
        logger.exception("Could not publish the jobs waiting behind job %s", ended_job_id)
