"""Prometheus metrics in the text exposition format, without a client library.

Request counts and latencies and upload bytes are counted in each API process and summed over
the host's API processes at scrape time (``service/shared_metrics.py``); job counts, queue depths,
job durations and the workers' heartbeats are read from the database, so every API process
reports the same numbers.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from service.db.models import Job, JobKind, JobStatus, Worker
from service.fleet import QueueState

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


def _labels(**labels: str) -> str:
    escaped = (
        f'{key}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for key, value in labels.items()
    )
    return "{" + ",".join(escaped) + "}"


def _histogram_lines(
    name: str,
    labels: dict[str, str],
    buckets: Sequence[float],
    cumulative_counts: Sequence[int],
    total: float,
    count: int,
) -> list[str]:
    lines = [
        f"{name}_bucket{_labels(**labels, le=f'{bound:g}')} {cumulative}"
        for bound, cumulative in zip(buckets, cumulative_counts, strict=True)
    ]
    lines.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {count}")
    lines.append(f"{name}_sum{_labels(**labels)} {total}")
    lines.append(f"{name}_count{_labels(**labels)} {count}")
    return lines


class Metrics:
    """This process's request and upload counters (thread-safe).

    :meth:`snapshot` gives them as JSON-ready data; :func:`request_lines` renders the sum of
    several processes' snapshots (``service/shared_metrics.py`` brings them together).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._latency_buckets: dict[tuple[str, str], list[int]] = {}
        self._latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self._latency_count: dict[tuple[str, str], int] = defaultdict(int)
        self._upload_bytes = 0
        self._changes = 0

    @property
    def changes(self) -> int:
        """How many observations were made so far (to tell whether a snapshot is outdated)."""
        return self._changes

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route)
        with self._lock:
            self._requests[(method, route, str(status))] += 1
            buckets = self._latency_buckets.setdefault(key, [0] * len(LATENCY_BUCKETS))
            for index, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[index] += 1
            self._latency_sum[key] += seconds
            self._latency_count[key] += 1
            self._changes += 1

    def count_upload_bytes(self, size: int) -> None:
        with self._lock:
            self._upload_bytes += size
            self._changes += 1

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON-ready data."""
        with self._lock:
            return {
                "requests": [[*key, count] for key, count in self._requests.items()],
                "latency": [
                    [*key, buckets, self._latency_sum[key], self._latency_count[key]]
                    for key, buckets in self._latency_buckets.items()
                ],
                "upload_bytes": self._upload_bytes,
            }


def request_lines(snapshots: Iterable[Mapping[str, Any]]) -> list[str]:
    """Request counts, latencies and upload bytes summed over processes' snapshots."""
    requests: dict[tuple[str, str, str], int] = defaultdict(int)
    latency_buckets: dict[tuple[str, str], list[int]] = {}
    latency_sum: dict[tuple[str, str], float] = defaultdict(float)
    latency_count: dict[tuple[str, str], int] = defaultdict(int)
    upload_bytes = 0
    for snapshot in snapshots:
        for method, route, status, count in snapshot["requests"]:
            requests[(method, route, status)] += count
        for method, route, buckets, total, count in snapshot["latency"]:
            key = (method, route)
            summed = latency_buckets.setdefault(key, [0] * len(LATENCY_BUCKETS))
            latency_buckets[key] = [a + b for a, b in zip(summed, buckets, strict=True)]
            latency_sum[key] += total
            latency_count[key] += count
        upload_bytes += snapshot["upload_bytes"]
    lines = [
        "# HELP llfc_http_requests_total HTTP requests by method, route and status.",
        "# TYPE llfc_http_requests_total counter",
    ]
    for (method, route, status), count in sorted(requests.items()):
        lines.append(
            f"llfc_http_requests_total{_labels(method=method, route=route, status=status)} {count}"
        )
    lines += [
        "# HELP llfc_http_request_duration_seconds HTTP request latency.",
        "# TYPE llfc_http_request_duration_seconds histogram",
    ]
    for (method, route), buckets in sorted(latency_buckets.items()):
        lines += _histogram_lines(
            "llfc_http_request_duration_seconds",
            {"method": method, "route": route},
            LATENCY_BUCKETS,
            buckets,
            latency_sum[(method, route)],
            latency_count[(method, route)],
        )
    lines += [
        "# HELP llfc_upload_bytes_total Bytes received in checkpoint and dataset uploads.",
        "# TYPE llfc_upload_bytes_total counter",
        f"llfc_upload_bytes_total {upload_bytes}",
    ]
    return lines


METRICS = Metrics()


def job_lines(session: Session) -> list[str]:
    """Jobs by kind and status and job run times, from the database."""
    counts = {
        (kind, status): count
        for kind, status, count in session.execute(
            select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
        ).tuples()
    }
    lines = ["# HELP llfc_jobs Jobs by kind and status.", "# TYPE llfc_jobs gauge"]
    for kind in JobKind:
        for status in JobStatus:
            count = counts.get((kind, status), 0)
            lines.append(f"llfc_jobs{_labels(kind=kind, status=status)} {count}")
    lines += [
        "# HELP llfc_job_duration_seconds Run time of finished jobs, from start to finish.",
        "# TYPE llfc_job_duration_seconds histogram",
    ]
    bucket_columns = [
        func.sum(case((Job.run_seconds <= bound, 1), else_=0)) for bound in JOB_DURATION_BUCKETS
    ]
    statement = (
        select(Job.kind, func.count(), func.sum(Job.run_seconds), *bucket_columns)
        .where(Job.run_seconds.is_not(None))
        .group_by(Job.kind)
    )
    for kind, count, total, *buckets in session.execute(statement).tuples():
        lines += _histogram_lines(
            "llfc_job_duration_seconds",
            {"kind": kind},
            JOB_DURATION_BUCKETS,
            [int(b or 0) for b in buckets],
            float(total or 0.0),
            int(count),
        )
    return lines


def fleet_lines(
    states: Mapping[str, QueueState], workers: Sequence[Worker], now: datetime
) -> list[str]:
    """Each queue's depth and live consumers, and each registered worker's heartbeat age."""
    lines = [
        "# HELP llfc_queue_depth Jobs waiting for a worker, by queue.",
        "# TYPE llfc_queue_depth gauge",
        *(f"llfc_queue_depth{_labels(queue=q)} {state.queued}" for q, state in states.items()),
        "# HELP llfc_workers Live workers (heartbeat within the lease) consuming each queue.",
        "# TYPE llfc_workers gauge",
        *(f"llfc_workers{_labels(queue=q)} {state.consumers}" for q, state in states.items()),
        "# HELP llfc_worker_heartbeat_age_seconds Seconds since each registered worker's last "
        "heartbeat.",
        "# TYPE llfc_worker_heartbeat_age_seconds gauge",
    ]
    for worker in workers:
        labels = _labels(worker=worker.name, queues=",".join(worker.queues))
        age_s = max((now - worker.last_heartbeat_at).total_seconds(), 0.0)
        lines.append(f"llfc_worker_heartbeat_age_seconds{labels} {age_s:.3f}")
    return lines


def render(sections: Iterable[list[str]]) -> str:
    return "\n".join(line for section in sections for line in section) + "\n"
