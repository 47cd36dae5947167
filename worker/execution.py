"""Running one job in the worker: claim it, hand it to the executor of its kind, record how it
ended. Imported only in the worker child process (it loads torch).

The claim takes the job's lease (``service/lifecycle.py``): a duplicate delivery of the message,
or a job cancelled while queued, does nothing, and while the job runs the worker's main process
keeps the lease fresh (``worker/leases.py``: this process may hold the GIL for minutes). The
run's writes are in ``worker/run_state.py``, its inputs in ``worker/inputs.py`` and the four
kinds in ``worker/executors.py``. A failure is stored as a sentence; its traceback goes to the
logs only.
"""

from __future__ import annotations

import logging

from celery.exceptions import SoftTimeLimitExceeded

from llfc_core.device import (
    is_device_failure,
    is_out_of_memory,
    release_cached_memory,
    resolve_device,
)
from llfc_core.errors import CancelledError, LLFCError
from llfc_core.precision import float32_precision
from llfc_core.progress import Reporter
from service.checkpoints import job_arch
from service.core.config import Settings, get_settings
from service.db.models import Job, JobKind
from service.db.session import session_scope
from service.errors import StorageError
from service.lifecycle import soft_time_limit_sentence
from service.queue import publish_waiting_jobs
from service.storage import open_blob_store
from worker.executors import EXECUTORS
from worker.inputs import JobContext
from worker.run_state import JobRun

logger = logging.getLogger(__name__)

INTERNAL_FAILURE = (
    "The job failed because of an internal error; the operators can find the details in the "
    "worker logs."
)
DEVICE_FAILURE = (
    "The job failed because of an error of the GPU it ran on (such as a device-side assertion); "
    "the worker process was replaced by a fresh one. Submitting the job again runs it there; the "
    "operators can find the details in the worker logs."
)


def out_of_memory_sentence(job: Job) -> str:
    """What a user can change when their job did not fit in the memory of its device."""
    batch_size = (job.params or {}).get("batch_size")
    lower = f"a lower 'batch_size' (it was {batch_size}) or " if batch_size is not None else ""
    return (
        f"The job ran out of memory on its device (GPU or host); submit it again with "
        f"{lower}a smaller model."
    )


def run_job(job_id: str, redelivered: bool = False) -> None:
    """Claim ``job_id`` and run the executor of its kind on it, recording how it ended.

    ``redelivered``: the broker marked the message as handed out before (only logged).
    """
    settings = get_settings()
    run = JobRun(job_id, settings)
    job = run.claim()
    if job is None:
        sent_to = run.send_to_its_queue()
        if sent_to is not None:
            logger.warning(
                "Job %s belongs to the queue %r, which this worker does not consume "
                "(LLFC_WORKER_QUEUES); sent it there",
                job_id,
                sent_to,
            )
            return
        logger.info(
            "Job %s is not queued (a duplicate delivery%s, a run elsewhere holds it, it was "
            "cancelled, or its owner runs the most jobs allowed at once); skipped",
            job_id,
            ", redelivered by the broker" if redelivered else "",
        )
        return
    store = open_blob_store(settings)
    logger.info("Job %s (%s) started, attempt %d", job_id, job.kind, job.attempts)
    device_failed = False
    try:
        with session_scope() as session:
            arch = job_arch(session, store, job, settings)
        context = JobContext(
            job=job,
            arch=arch,
            settings=settings,
            store=store,
            reporter=Reporter(callback=run.on_progress, should_stop=run.should_stop),
            device=resolve_device(settings.device),
        )
        # The device's float32 defaults (TF32 convolutions on recent GPUs) must not move the
        # numbers; the flags are this child's, restored for its next job.
        with float32_precision(context.precision):
            outcome = EXECUTORS[JobKind(job.kind)](context)
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
    except StorageError as error:
        # The blob store's sentence names the bucket and what the operators must do, never a
        # credential; the user learns the job did not fail for its inputs' sake.
        logger.exception("Job %s failed: the blob store failed", job_id)
        run.fail(error.message)
    except Exception as error:
        if is_out_of_memory(error):
            logger.warning("Job %s ran out of memory: %s", job_id, error)
            run.fail(out_of_memory_sentence(job))
        elif is_device_failure(error):
            logger.exception("Job %s failed with an error of the GPU", job_id)
            run.fail(DEVICE_FAILURE)
            device_failed = True
        else:
            logger.exception("Job %s failed with an internal error", job_id)
            run.fail(INTERNAL_FAILURE)
    else:
        logger.info("Job %s succeeded", job_id)
    # After the except clauses, which held the failed job's tensors through the traceback.
    release_cached_memory()
    wake_waiting_jobs(job_id, settings)
    if device_failed:
        # CUDA refuses every later call in this process: end it, so the pool forks a fresh
        # child for the next job. The job's row already says how it ended; the main process
        # sees a lost child whose job is no longer running, and changes nothing.
        raise SystemExit(f"job {job_id}: the GPU failed; this worker process ends")


def wake_waiting_jobs(ended_job_id: str, settings: Settings) -> None:
    """Publish the jobs of the ended job's owner that wait for the running-job slot it freed.

    A failure is only logged: the republisher sends them later.
    """
    try:
        with session_scope() as session:
            publish_waiting_jobs(session, settings, ended_job_id)
    except Exception:
        logger.exception("Could not publish the jobs waiting behind job %s", ended_job_id)
