"""The worker's row in the registry (``service/fleet.py``), kept by the Celery main process.

The main process only waits for messages, so its thread beats on time while a pool child holds
the GIL for minutes (as the lease keeper's does, ``worker/leases.py``). The row is written when
the worker is ready, then every ``LLFC_HEARTBEAT_SECONDS``, and deleted when it stops cleanly
(``worker/tasks.py`` connects :meth:`WorkerRegistration.start` and :meth:`stop` to Celery's
signals). Its device and GPUs are the settings' text: asking CUDA here would initialise it in
the main process, and every child forked after would inherit a context it cannot use.
"""

from __future__ import annotations

import logging
import threading

from service.core.config import Settings
from service.db.models import utcnow
from service.db.session import short_lived_session
from service.fleet import WorkerIdentity, beat_worker, remove_worker
from service.lifecycle import worker_token

logger = logging.getLogger(__name__)

STOP_WAIT_S = 5.0


def worker_identity(settings: Settings) -> WorkerIdentity:
    """This worker process as its row shows it: ``host:pid``, queues, device, GPUs (each cut
    to its column's 200 characters)."""
    gpus = ",".join(settings.worker_gpu_ids)[:200] or None
    return WorkerIdentity(worker_token()[:200], settings.consumed_queues, settings.device, gpus)


class WorkerRegistration:
    """A daemon thread writing this worker's row every ``LLFC_HEARTBEAT_SECONDS``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.identity = worker_identity(settings)
        self.started_at = utcnow()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llfc-registry", daemon=True)

    def beat_once(self) -> None:
        with short_lived_session() as session:
            beat_worker(session, self.identity, self.started_at)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and delete the row, so the queues stop counting this worker at once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT_S)
        try:
            with short_lived_session() as session:
                remove_worker(session, self.identity.name)
        except Exception:
            # Left behind, the row stops counting once its heartbeat is older than the lease.
            logger.exception("Could not remove this worker's registry row")

    def _run(self) -> None:
        while True:
            try:
                self.beat_once()
            except Exception:
                logger.exception("This worker's registry row could not be written")
            if self._stop.wait(self.settings.heartbeat_seconds):
                return
