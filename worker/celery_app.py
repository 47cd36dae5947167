"""The Celery application shared by the API (which publishes) and the worker (which runs).

Celery only carries job ids; the job row is the record. Tasks are acknowledged late with one
message prefetched, so a worker that dies mid-job leaves its message to be delivered again, and
the atomic claim in ``worker/execution.py`` turns any duplicate delivery into a no-op. There is no
result backend.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from service.core.config import Settings, get_settings

QUEUE = "llfc"
TASK_NAMES = {kind: f"llfc.{kind}" for kind in ("match", "interpolate", "analyze", "train")}
FILESYSTEM_POLL_SECONDS = 0.2
BROKER_CONNECT_TIMEOUT_S = 5
REDIS_VISIBILITY_TIMEOUT_S = 24 * 3600
"""Redis hands an unacknowledged message to another worker after this long; jobs may run for
hours, and a duplicate is a no-op anyway."""


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Folders of the filesystem transport (embedded mode) or Redis' redelivery delay."""
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
        }
    return {
        "visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S,
        "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("llfc", include=["worker.tasks"])
    app.conf.update(
        broker_url=settings.resolved_broker_url,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        result_backend=None,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
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


celery_app = make_celery(get_settings())
