"""The database side of one run (one attempt) of a job, as the engine's reporter sees it.

Every write goes through ``service/lifecycle.py`` and is conditional on the run still holding
the job's lease, so a run that lost it (the job was taken back) changes nothing and stops at its
next progress report. Progress and the cancellation flag go through the database, throttled, so
a long job neither floods it nor misses a cancel by more than a batch and a poll interval.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime

from llfc_core.archs import Architecture
from service import lifecycle
from service.checkpoints import store_artifact
from service.core.config import Settings
from service.db.models import Job, JobStatus, utcnow
from service.db.session import session_scope
from service.queue import publish_and_mark
from service.results import json_safe, layer_metric_rows, sweep_pair_row
from service.storage import BlobStore
from worker.executors import Outcome

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5
CANCEL_POLL_INTERVAL_S = 0.5


class JobRun:
    """One run of a job: its claim, throttled progress, the stop check and its end."""

    def __init__(self, job_id: str, settings: Settings) -> None:
        self.job_id = job_id
        self.settings = settings
        self.attempt = 0
        self.started_at: datetime | None = None
        self.lease_lost = False
        self.timed_out = False
        self._claimed_at = 0.0
        self._last_progress_write = 0.0
        self._pending_progress: tuple[float, str] | None = None
        self._last_cancel_poll = 0.0
        self._cancel_seen = False

    def claim(self) -> Job | None:
        """Take the job's lease (see ``service/lifecycle.py``); None if it is not takeable."""
        with session_scope() as session:
            job = lifecycle.claim_job(session, self.job_id, lifecycle.worker_token(), self.settings)
            if job is None:
                return None
            session.expunge(job)
        self.attempt = job.attempts
        self.started_at = job.started_at
        self._claimed_at = time.monotonic()
        return job

    def send_to_its_queue(self) -> str | None:
        """After a refused claim: publish the job to its own queue when this worker does not
        consume that one; returns the queue it was sent to, None when there was no need or the
        broker refused (the republisher sends it later)."""
        with session_scope() as session:
            queue = lifecycle.queue_not_consumed(session, self.job_id, self.settings)
            if queue is None or not publish_and_mark(session, [self.job_id]):
                return None
        return queue

    def on_progress(self, fraction: float, stage: str) -> None:
        """Keep the latest progress and write it at most every PROGRESS_INTERVAL_S.

        Stages name their batch ("batch 3 of 40"), so writing whenever the stage text changed
        wrote once per batch: a commit every few milliseconds, a sixth of a short analysis. What
        a report within the interval leaves pending, the next report or stop check writes.
        """
        self._pending_progress = (fraction, stage)
        self._write_pending_progress()

    def _write_pending_progress(self) -> None:
        moment = time.monotonic()
        if self._pending_progress is None or (
            moment - self._last_progress_write < PROGRESS_INTERVAL_S
        ):
            return
        fraction, stage = self._pending_progress
        self._pending_progress = None
        self._last_progress_write = moment
        with session_scope() as session:
            lifecycle.report_progress(session, self.job_id, self.attempt, fraction, stage, utcnow())

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
        self._write_pending_progress()
        moment = time.monotonic()
        if self._cancel_seen or moment - self._last_cancel_poll < CANCEL_POLL_INTERVAL_S:
            return self._cancel_seen
        self._last_cancel_poll = moment
        with session_scope() as session:
            check = lifecycle.check_run(session, self.job_id, self.attempt)
        if check is lifecycle.RunCheck.LEASE_LOST:
            logger.warning("Job %s attempt %d no longer holds its lease", self.job_id, self.attempt)
            self.lease_lost = True
            return True
        self._cancel_seen = check is lifecycle.RunCheck.CANCEL_REQUESTED
        return self._cancel_seen

    def fail(self, message: str) -> None:
        with session_scope() as session:
            lifecycle.end_run(
                session, self.job_id, self.attempt, JobStatus.FAILED, self.started_at, message
            )

    def cancelled(self) -> None:
        with session_scope() as session:
            lifecycle.end_run(
                session, self.job_id, self.attempt, JobStatus.CANCELLED, self.started_at
            )

    def succeed(self, job: Job, outcome: Outcome, store: BlobStore, arch: Architecture) -> None:
        """Store artifacts, result, metric rows and sweep pairs, and mark the job succeeded, in
        one commit."""
        # The end is when the computation ended, before the outputs are stored, as a run that
        # ends earlier frees its owner's running-job slot for the next claim.
        now = utcnow()
        result = json_safe(outcome.result)
        with session_scope() as session:
            artifacts = [
                (
                    name,
                    store_artifact(
                        session, store, job.owner_id, arch, state, f"{name} of {job.id}", job.id
                    ).id,
                )
                for name, state in outcome.artifacts
            ]
            metric_rows = layer_metric_rows(result) if outcome.with_layer_metrics else []
            pair_rows = [
                sweep_pair_row(job.model_ids or [], index_a, index_b, json_safe(analysis))
                for index_a, index_b, analysis in outcome.sweep_pairs
            ]
            if not lifecycle.succeed_run(
                session,
                job.id,
                self.attempt,
                self.started_at,
                result,
                artifacts,
                (dataclasses.asdict(row) for row in metric_rows),
                now,
                pair_rows,
            ):
                logger.warning("Job %s no longer held its lease at its end; result dropped", job.id)
