"""Request counters shared between the API processes of one host (``LLFC_API_WORKERS`` > 1).

The processes serve one port, so a Prometheus scrape reaches one of them at random; each must
report the counts of all. Every process writes its counters (:meth:`Metrics.snapshot`) to a
file of its own in ``settings.metrics_dir`` at most once a second while they change, and the
process answering a scrape adds its live counters to the others' files. Counts a process made
in its last second before it died are lost; the rest stay, so counters never go backwards
while the service runs. ``llfc api`` and ``llfc serve`` empty the folder when they start: a new
service starts its counters from zero, which Prometheus reads as a restart.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.metrics import Metrics

PUBLISH_INTERVAL_S = 1.0


def _own_file(folder: Path) -> Path:
    return folder / f"api-{os.getpid()}.json"


def clear(folder: Path) -> None:
    """Forget the counters of a previous run of the service."""
    for path in folder.glob("api-*.json"):
        path.unlink(missing_ok=True)


def publish(folder: Path, metrics: Metrics) -> None:
    """Write this process's counters, replacing its previous file in one rename."""
    folder.mkdir(parents=True, exist_ok=True)
    target = _own_file(folder)
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(metrics.snapshot()))
    partial.replace(target)


def collect(folder: Path, metrics: Metrics) -> list[dict[str, Any]]:
    """This process's live counters and every other process's last published ones."""
    snapshots = [metrics.snapshot()]
    own = _own_file(folder)
    for path in sorted(folder.glob("api-*.json")):
        if path == own:
            continue
        try:
            snapshots.append(json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            continue  # cleared meanwhile, or written by something else than publish()
    return snapshots


@contextmanager
def publishing(folder: Path, metrics: Metrics) -> Iterator[None]:
    """Publish ``metrics`` every second while they change, and once more at the end."""
    stop = threading.Event()

    def loop() -> None:
        published = -1
        while not stop.wait(PUBLISH_INTERVAL_S):
            if metrics.changes != published:
                published = metrics.changes
                publish(folder, metrics)

    thread = threading.Thread(target=loop, name="llfc-metrics-publisher", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        publish(folder, metrics)
