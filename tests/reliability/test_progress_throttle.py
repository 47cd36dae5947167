"""A run writes its progress at most every PROGRESS_INTERVAL_S, whatever its stage text says.

The engine names each batch in its stage ("batch 3 of 40"); a write per new stage text was a
commit per batch, a sixth of a short analysis through the service (benchmarks/service_path.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from service import lifecycle
from service.core.config import Settings
from worker import run_state
from worker.run_state import PROGRESS_INTERVAL_S, JobRun


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> tuple[Clock, list[tuple[float, str]]]:
    """A fake clock for the run, and the progress it writes (no database)."""
    clock, writes = Clock(), []

    @contextmanager
    def no_session() -> Iterator[None]:
        yield None

    def report_progress(
        _session: Any, _job: str, _attempt: int, fraction: float, stage: str, _now: Any
    ) -> None:
        writes.append((fraction, stage))

    monkeypatch.setattr(run_state.time, "monotonic", clock)
    monkeypatch.setattr(run_state, "session_scope", no_session)
    monkeypatch.setattr(lifecycle, "report_progress", report_progress)
    monkeypatch.setattr(lifecycle, "check_run", lambda *_: lifecycle.RunCheck.HELD)
    return clock, writes


def _run() -> JobRun:
    return JobRun("job_1", Settings(job_soft_time_limit_seconds=0))


def test_progress_of_every_batch_is_written_once_per_interval(
    recorded: tuple[Clock, list[tuple[float, str]]],
) -> None:
    clock, writes = recorded
    run = _run()
    for batch in range(1, 41):  # 40 batches in 0.4 s, each with its own stage text
        run.on_progress(batch / 40, f"measuring: batch {batch} of 40")
        clock.now += 0.01
    assert writes == [(1 / 40, "measuring: batch 1 of 40")]
    clock.now += PROGRESS_INTERVAL_S
    run.on_progress(1.0, "analysis finished")
    assert writes[-1] == (1.0, "analysis finished")
    assert len(writes) == 2


def test_progress_held_back_is_written_by_the_next_stop_check(
    recorded: tuple[Clock, list[tuple[float, str]]],
) -> None:
    clock, writes = recorded
    run = _run()
    run.on_progress(0.1, "built A")
    run.on_progress(0.2, "matching")  # within the interval: held back
    assert writes == [(0.1, "built A")]
    clock.now += PROGRESS_INTERVAL_S
    assert run.should_stop() is False
    assert writes == [(0.1, "built A"), (0.2, "matching")]
    clock.now += PROGRESS_INTERVAL_S
    run.should_stop()  # nothing new to write
    assert len(writes) == 2
