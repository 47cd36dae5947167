"""The broker contract between the API (which publishes) and the worker (which runs): the Celery
application, its queues and the task name.

Each logical queue (``gpu``, ``cpu``: ``jobs.queue``, see ``service/routing.py``) has its own
Celery queue, ``llfc.<queue>``; a worker subscribes to those of the queues it consumes, and to
the legacy queue ``llfc`` that every job went to before, so messages queued before an upgrade
still run (the claim sends one on to its job's queue when the worker does not take that one).

Celery only carries job ids; the job row is the record. Tasks are acknowledged late with one
message prefetched per child, so a worker that dies mid-job leaves its message to be delivered
again; Redis also hands out again any message left unacknowledged for longer than its visibility
timeout, even one whose job is still running. Neither can make a job run twice at once: the
claim in ``service/lifecycle.py`` refuses a job that is running with a fresh heartbeat. There is
no result backend.

Each job runs under a soft time limit (``SoftTimeLimitExceeded`` is raised in the task, which
ends the job failed with a sentence) and a hard one (the pool child is killed; the main process
records the failure, see ``worker/tasks.py``).

The application is built at its first use, not at import, so importing the service neither
connects anywhere nor creates the filesystem transport's folders; the worker registers its task
on the same application (``worker/tasks.py``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery

from service.core.config import Settings, get_settings

logger = logging.getLogger(__name__)

LEGACY_QUEUE = "llfc"
TASK_NAME = "llfc.run_job"
"""The one task every job is published as; the worker dispatches on the job row's kind."""
LEGACY_TASK_NAMES = tuple(f"llfc.{kind}" for kind in ("match", "interpolate", "analyze", "train"))
"""The per-kind names jobs were published under before the one task name, still run for messages
already queued; kinds added since (sweep, merge) were only ever published as ``TASK_NAME``."""
FILESYSTEM_POLL_SECONDS = 0.2
BROKER_CONNECT_TIMEOUT_S = 5
CHILD_START_TIMEOUT_S = 120.0
"""How long a new pool child may take to start: it imports torch and the engine first (see
``worker/tasks.py``), which takes far longer than Celery's default of 4 s on a busy machine, and
a child replacing a crashed one would otherwise be killed again and again."""


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Folders of the filesystem transport (embedded mode; created here) or Redis' redelivery
    delay, then ``LLFC_BROKER_TRANSPORT_OPTIONS`` over them."""
    if settings.uses_filesystem_broker:
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": FILESYSTEM_POLL_SECONDS,
            **settings.broker_transport_options,
        }
    return {
        "visibility_timeout": settings.broker_visibility_timeout_seconds,
        "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
        **settings.broker_transport_options,
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("llfc")
    app.conf.update(
        broker_url=settings.resolved_broker_url,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=LEGACY_QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        result_backend=None,
        worker_prefetch_multiplier=1,
        # A broker blip must not stop hour-long jobs; their message may come again, which the
        # claim refuses while the job runs.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_soft_time_limit=settings.job_soft_time_limit_seconds or None,
        task_time_limit=settings.job_time_limit_seconds,
        worker_concurrency=settings.worker_concurrency,
        worker_max_tasks_per_child=settings.worker_max_jobs_per_child or None,
        worker_proc_alive_timeout=CHILD_START_TIMEOUT_S,
        worker_hijack_root_logger=False,
        # Remote control and events need a broadcast channel; the filesystem transport would
        # poll extra folders for them, and nothing here uses them.
        worker_enable_remote_control=not settings.uses_filesystem_broker,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
    )
    return app


@functools.cache
def celery_app() -> Celery:
    """The process's one Celery application, built from the settings at its first use."""
    return make_celery(get_settings())


def celery_queue(queue: str) -> str:
    """The Celery queue carrying the messages of logical queue ``queue``."""
    return f"{LEGACY_QUEUE}.{queue}"


def consumed_celery_queues(queues: Sequence[str]) -> list[str]:
    """What a worker consuming the logical ``queues`` subscribes to: theirs and the legacy one."""
    return [LEGACY_QUEUE, *(celery_queue(queue) for queue in queues)]


def publish_job(job_id: str, queue: str) -> bool:
    """Send the task of a committed job to its logical ``queue``; returns False (and logs) if
    the broker refused it."""
    try:
        celery_app().send_task(TASK_NAME, args=[job_id], queue=celery_queue(queue))
    except Exception:
        logger.exception("Could not publish job %s; it stays queued until republished", job_id)
        return False
    return True


def purge_queues(queues: Sequence[str]) -> int:
    """Drop every message waiting in the logical ``queues`` and the legacy queue; the caller
    republishes from the job rows."""
    with celery_app().connection_for_write() as connection:
        channel = connection.default_channel
        return sum(int(channel.queue_purge(name) or 0) for name in consumed_celery_queues(queues))


def check_connection(timeout_s: float) -> None:
    """Raise unless the broker accepts a connection within ``timeout_s``."""
    with celery_app().connection_for_write() as connection:
        connection.ensure_connection(max_retries=0, timeout=timeout_s)
