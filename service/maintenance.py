"""The periodic sweep that keeps the job rows and the blob store honest after crashes.

Every API process (``llfc api``, ``llfc serve``) runs it every
``LLFC_MAINTENANCE_INTERVAL_SECONDS``, first at start. Each step is a conditional UPDATE or an
idempotent file removal, so several API processes sweeping at once do no harm:

1. reap: running jobs whose heartbeat is older than the lease are queued again and published
   (or end failed after ``LLFC_MAX_ATTEMPTS`` runs, or cancelled if that was asked);
2. republish: jobs still queued ``LLFC_REPUBLISH_AFTER_SECONDS`` after their last publish are
   published again, whatever became of their message;
3. clean: partial uploads and artifacts untouched for ``LLFC_INCOMING_MAX_AGE_SECONDS`` are
   deleted from the staging folder, and multipart uploads to a bucket started that long ago
   and never completed (a process killed mid-transfer) are aborted;
4. prune: the registry rows of workers silent for a day are deleted (``service/fleet.py``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from service.core.config import Settings
from service.db.session import session_scope
from service.errors import StorageError
from service.fleet import prune_workers
from service.lifecycle import reap_lost_runs
from service.queue import publish_and_mark, republish_unclaimed
from service.storage import open_blob_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    requeued: int
    failed: int
    cancelled: int
    republished: int
    removed_files: int
    pruned_workers: int


def sweep(settings: Settings) -> SweepReport:
    """One pass of the four steps above."""
    with session_scope() as session:
        reaped = reap_lost_runs(session, settings)
        if reaped.requeued:
            publish_and_mark(session, reaped.requeued)
    with session_scope() as session:
        republished = republish_unclaimed(session, settings)
    try:
        removed = open_blob_store(settings).remove_abandoned(settings.incoming_max_age_seconds)
    except StorageError as error:
        # A bucket out of reach is /readyz's news; the sentence is enough here, every interval.
        logger.warning("Abandoned uploads were not cleaned up: %s", error.message)
        removed = []
    with session_scope() as session:
        pruned = prune_workers(session)
    report = SweepReport(
        requeued=len(reaped.requeued),
        failed=len(reaped.failed),
        cancelled=len(reaped.cancelled),
        republished=republished,
        removed_files=len(removed),
        pruned_workers=pruned,
    )
    if reaped.requeued or reaped.failed or reaped.cancelled:
        logger.warning(
            "Took back jobs whose worker stopped answering: queued again %s, failed %s, "
            "cancelled %s",
            reaped.requeued,
            reaped.failed,
            reaped.cancelled,
        )
    if removed:
        logger.info("Removed %d abandoned partial file(s) or upload(s): %s", len(removed), removed)
    return report


class MaintenanceLoop:
    """Runs :func:`sweep` in a daemon thread: once at start, then every interval, until stopped.

    A failing pass (database or broker out of reach) is logged and tried again next interval.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llfc-maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            try:
                sweep(self.settings)
            except Exception:
                logger.exception(
                    "The maintenance sweep failed; trying again in %gs",
                    self.settings.maintenance_interval_seconds,
                )
            if self._stop.wait(self.settings.maintenance_interval_seconds):
                return
