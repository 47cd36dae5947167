"""The worker's one Celery task, which runs any job by its row's kind (``worker/execution.py``),
registered on the broker contract's application (``service/broker.py``) under its name and the
per-kind names of earlier versions, so messages queued before an upgrade still run.

The engine, and with it torch, is imported inside the task, that is in the prefork child: the
Celery parent process never loads torch or touches CUDA. Each child is pinned to its own GPU
first when the worker has several (``worker/gpus.py``). The parent's part is
:class:`JobRequest`: it beats for the jobs its children run, and records in the job row the two
ways a run can end without its own code reaching the end, and it keeps the worker's row in the
registry of live workers (``worker/registry.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import TimeLimitExceeded
from billiard.process import current_process
from celery import Task
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from celery.worker.request import Request
from sqlalchemy.orm import Session

from service.broker import LEGACY_TASK_NAMES, TASK_NAME, celery_app
from service.core.config import get_settings
from service.db.models import JobStatus
from service.db.session import short_lived_session
from service.lifecycle import (
    fail_claim_of,
    hard_time_limit_sentence,
    release_claim_of,
    worker_token,
)
from service.queue import publish_waiting_jobs
from worker.gpus import pin_child_to_its_gpu
from worker.leases import lease_keeper
from worker.registry import WorkerRegistration

logger = logging.getLogger(__name__)


class JobRequest(Request):
    """The worker main process's handle on one job message.

    * Hard time limit: the pool child running the job is killed; the job ends ``failed`` with a
      sentence (the message is acknowledged, so it does not come back).
    * The pool child died (SIGKILL, out of memory, a crash in native code): the job is queued
      again at once and its message requeued (``task_reject_on_worker_lost``), so the next
      delivery claims it as attempt + 1; after ``LLFC_MAX_ATTEMPTS`` runs it ends ``failed``.

    Both only touch a job whose claim this message's child holds (``claimed_by``), never one
    that a duplicate delivery found running elsewhere. The main process opens a database
    connection for each and closes it at once, as it forks new children at any time.

    From the moment a child accepts the message until its task ends, the main process beats
    for the job under that child's claim (``worker/leases.py``): the child may hold the GIL for
    longer than the lease.
    """

    def _job_and_token(self) -> tuple[str, str] | None:
        if not self.worker_pid or not self.args:
            return None
        return str(self.args[0]), worker_token(self.worker_pid)

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        super().on_accepted(pid, time_accepted)
        held = self._job_and_token()
        if held is not None:
            lease_keeper.hold(*held)

    def _stop_beating(self) -> None:
        held = self._job_and_token()
        if held is not None:
            lease_keeper.release(*held)

    def acknowledge(self) -> None:
        # With acks_late, the message is acknowledged once its task returned: where a run that
        # ends normally stops being beaten for (Celery's own on_success replaces ours).
        self._stop_beating()
        super().acknowledge()

    def _record(self, change: Callable[[Session, str, str], Any]) -> Any:
        held = self._job_and_token()
        if held is None:
            return None
        job_id, token = held
        try:
            with short_lived_session() as session:
                return change(session, job_id, token)
        except Exception:
            logger.exception("Could not record how job %s ended; the lease will expire", job_id)
            return None

    def _publish_waiting_jobs(self) -> None:
        """The run ended without its code reaching the end: publish the jobs of its owner that
        wait for the running-job slot it freed."""
        self._record(
            lambda session, job_id, _token: publish_waiting_jobs(session, get_settings(), job_id)
        )

    def _fail_at_hard_limit(self, limit_s: float) -> None:
        sentence = hard_time_limit_sentence(limit_s)
        if self._record(
            lambda session, job_id, token: fail_claim_of(session, job_id, token, sentence)
        ):
            logger.warning("Job %s killed at its hard time limit of %gs", self.args[0], limit_s)
            self._publish_waiting_jobs()

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft:
            self._stop_beating()
            self._fail_at_hard_limit(timeout)
        super().on_timeout(soft, timeout)

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        # The row first, then Celery, which may requeue the message: its next delivery must
        # find the job queued, not still running under a dead child's claim.
        self._stop_beating()
        exception = exc_info.exception
        if isinstance(exception, ExceptionWithTraceback):
            exception = exception.exc
        if isinstance(exception, TimeLimitExceeded):
            # Billiard reports the hard limit here first, then through on_timeout.
            limit = exception.args[0] if exception.args else get_settings().job_time_limit_seconds
            self._fail_at_hard_limit(float(limit))
        else:
            reason = f"queued again: its worker process stopped ({type(exception).__name__})"
            status = self._record(
                lambda session, job_id, token: release_claim_of(
                    session, job_id, token, get_settings(), reason
                )
            )
            if status in (JobStatus.FAILED, JobStatus.CANCELLED):
                self._publish_waiting_jobs()
            if status is not None:
                logger.warning(
                    "Job %s: its worker process %s stopped (%r); the job is now %s",
                    self.args[0],
                    self.worker_pid,
                    exception,
                    status,
                )
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class JobTask(Task):
    Request = JobRequest


def _redelivered(task: Task) -> bool:
    return bool((task.request.delivery_info or {}).get("redelivered"))


@worker_process_init.connect
def load_engine(**_: object) -> None:
    """Pin the new pool child to its GPU (``worker/gpus.py``), then import the engine, so the
    first job does not wait for torch."""
    # billiard numbers its pool children 0..concurrency-1 (``Process.index``).
    index = getattr(current_process(), "index", 0)
    pin_child_to_its_gpu(index, get_settings())
    import worker.execution  # noqa: F401
    from worker.child_gpu import log_child_gpu

    log_child_gpu(index)


_registrations: list[WorkerRegistration] = []
"""The main process's registration, from the worker's ready signal to its shutdown."""


@worker_ready.connect
def register_worker(**_: object) -> None:
    """Celery's main process is consuming: write this worker's row, then keep it fresh."""
    registration = WorkerRegistration(get_settings())
    registration.start()
    _registrations.append(registration)


@worker_shutdown.connect
def unregister_worker(**_: object) -> None:
    """A clean stop (warm or cold): delete this worker's row."""
    while _registrations:
        _registrations.pop().stop()


def job_task(self: Task, job_id: str) -> None:
    """Run the job ``job_id`` (any kind); its outputs go to its row, artifacts and metric rows."""
    from worker.execution import run_job

    run_job(job_id, redelivered=_redelivered(self))


for _name in (TASK_NAME, *LEGACY_TASK_NAMES):
    celery_app().task(name=_name, base=JobTask, bind=True)(job_task)


def run_worker(arguments: list[str]) -> None:
    """Run a Celery worker (``arguments`` as on its command line) with the job task above."""
    celery_app().worker_main(arguments)
