"""The heartbeats of running jobs, written by the Celery main process for its pool children.

A pool child computing a job may hold the GIL for minutes in one C call (``lap.lapjv`` on a large
cost matrix does), so a heartbeat thread inside the child would stop beating and the job would
be taken back and run twice while its first run still computes. The main process only waits
for messages, so a thread there beats on time whatever the children do. It beats for each job a
child has accepted, by the child's claim token (``host:pid``, ``claimed_by``), from the moment
the child accepts the message until its task returns or the child dies (``worker/tasks.py``
``JobRequest``). Hence a dead child stops being beaten for at once, and a dead worker (main
process and all) stops beating altogether, so the lease still expires in both cases.

Each pass opens one short-lived connection (:func:`service.db.session.short_lived_session`),
as the main process forks new pool children at any time.
"""

from __future__ import annotations

import logging
import threading
import time

from service.core.config import get_settings
from service.db.session import short_lived_session
from service.lifecycle import beat

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """A daemon thread beating every ``LLFC_HEARTBEAT_SECONDS`` for the (job id, claim token)
    pairs it holds; started at the first :meth:`hold`.

    A pair whose beat changes nothing (the child has not claimed the job yet, a duplicate
    delivery that claimed nothing, a run that was taken back) costs one UPDATE per beat until
    its task ends; a run that lost its lease learns it from its own next progress report.
    """

    def __init__(self) -> None:
        self._held: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, job_id: str, token: str) -> None:
        with self._lock:
            self._held.add((job_id, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llfc-leases", daemon=True)
                self._thread.start()

    def release(self, job_id: str, token: str) -> None:
        with self._lock:
            self._held.discard((job_id, token))

    def held(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._held)

    def beat_once(self) -> int:
        """Beat for every held pair; returns how many runs' heartbeats were refreshed."""
        refreshed = 0
        held = self.held()
        if not held:
            return 0
        with short_lived_session() as session:
            for job_id, token in held:
                refreshed += beat(session, job_id, token)
        return refreshed

    def _run(self) -> None:
        interval_s = get_settings().heartbeat_seconds
        while True:
            time.sleep(interval_s)
            try:
                self.beat_once()
            except Exception:
                # Out of reach longer than the lease, the jobs are taken back; until then the
                # next pass may well succeed.
                logger.exception("The heartbeats of the running jobs could not be written")


lease_keeper = LeaseKeeper()
"""The worker main process's one keeper (pool children never use it)."""
