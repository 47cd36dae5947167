"""The job watcher (``service/job_watch.py``) and the waits built on it
(``service/api/job_waits.py``), in one event loop: one query per tick whatever the number of
waiters, none without waiters, and a waiter leaves when its client does."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.exc import OperationalError
from support.stores import count_statements, migrated_engine

from service.api.job_waits import etag_matches, job_etag, job_events, wait_for_step
from service.db.models import Job, utcnow
from service.db.session import make_sessionmaker
from service.job_watch import JobState, JobWatcher
from service.jobs import public_job
from service.polls import read_job_states
from service.schemas import JobPublic

TICK_S = 0.02


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with migrated_engine(f"sqlite:///{tmp_path / 'llfc.db'}", {"own_alice": "alice"}) as engine:
        yield engine


def _add_jobs(engine: Engine, count: int) -> list[str]:
    with make_sessionmaker(engine)() as session:
        jobs = [
            Job(
                id=f"job_{index}",
                owner_id="own_alice",
                kind="match",
                queue="cpu",
                status="running",
                progress_stage="step 1",
                progress_fraction=0.1,
                params={},
                created_at=utcnow(),
            )
            for index in range(count)
        ]
        session.add_all(jobs)
        session.commit()
    return [job.id for job in jobs]


def _set(engine: Engine, job_id: str, values: dict[str, Any]) -> None:
    with make_sessionmaker(engine)() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def _public(engine: Engine, job_id: str) -> JobPublic:
    with make_sessionmaker(engine)() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return public_job(job, [])


def _watcher(engine: Engine) -> JobWatcher:
    return JobWatcher(lambda job_ids: read_job_states(engine, job_ids), TICK_S)


async def _never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


@pytest.mark.parametrize("waiters", [1, 40])
def test_the_watcher_reads_all_waited_jobs_in_one_query_per_tick(
    engine: Engine, waiters: int
) -> None:
    job_ids = _add_jobs(engine, waiters)
    watcher = _watcher(engine)
    statements = count_statements(engine)
    watched_s = 0.5

    async def wait_all() -> None:
        async with asyncio.timeout(5):
            waits = [
                wait_for_step(watcher, _never_disconnects, _public(engine, job_id), watched_s)
                for job_id in job_ids
            ]
            statements.clear()
            assert not any(await asyncio.gather(*waits))
        await watcher.stop()

    asyncio.run(wait_all())
    ticks = watched_s / TICK_S
    # One statement per tick, whether 1 or 40 jobs wait: at most one tick's worth more (the
    # tick's sleep comes on top of the query), and never one per waiter.
    assert ticks / 3 <= len(statements) <= ticks + 1
    assert all(" IN (" in statement for statement in statements)


def test_no_query_runs_while_nobody_waits(engine: Engine) -> None:
    [job_id] = _add_jobs(engine, 1)
    watcher = _watcher(engine)
    statements = count_statements(engine)

    async def wait_then_idle() -> None:
        await wait_for_step(watcher, _never_disconnects, _public(engine, job_id), 0.1)
        await asyncio.sleep(2 * TICK_S)
        statements.clear()
        await asyncio.sleep(10 * TICK_S)
        await watcher.stop()

    asyncio.run(wait_then_idle())
    assert statements == []


def test_a_wait_ends_at_the_next_step_but_not_at_a_fraction(engine: Engine) -> None:
    [job_id] = _add_jobs(engine, 1)
    watcher = _watcher(engine)

    async def scenario() -> tuple[bool, float, bool, float]:
        job = _public(engine, job_id)
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, _set, engine, job_id, {"progress_fraction": 0.5})
        started = time.perf_counter()
        fraction_only = await wait_for_step(watcher, _never_disconnects, job, 0.4)
        fraction_s = time.perf_counter() - started
        loop.call_later(0.1, _set, engine, job_id, {"progress_stage": "step 2"})
        started = time.perf_counter()
        stepped = await wait_for_step(watcher, _never_disconnects, _public(engine, job_id), 5)
        step_s = time.perf_counter() - started
        await watcher.stop()
        return fraction_only, fraction_s, stepped, step_s

    fraction_only, fraction_s, stepped, step_s = asyncio.run(scenario())
    assert not fraction_only and fraction_s >= 0.4
    assert stepped and 0.1 <= step_s < 0.1 + 10 * TICK_S


def test_a_database_outage_is_logged_once_not_at_every_tick(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    [job_id] = _add_jobs(engine, 1)
    reads = iter(range(1_000_000))

    def read_states(job_ids: Sequence[str]) -> Mapping[str, JobState]:
        if next(reads) < 20:
            raise OperationalError("SELECT", {}, ConnectionRefusedError("database down"))
        return read_job_states(engine, job_ids)

    watcher = JobWatcher(read_states, TICK_S)

    async def scenario() -> None:
        await wait_for_step(watcher, _never_disconnects, _public(engine, job_id), 30 * TICK_S)
        await watcher.stop()

    with caplog.at_level(logging.WARNING, logger="service.job_watch"):
        asyncio.run(scenario())
    assert [record.levelname for record in caplog.records] == ["ERROR", "WARNING"]
    assert "retrying every tick" in caplog.records[0].getMessage()


def test_a_change_between_the_read_and_the_subscription_is_not_missed(engine: Engine) -> None:
    [job_id] = _add_jobs(engine, 1)
    read_before = _public(engine, job_id)
    _set(engine, job_id, {"status": "succeeded", "progress_stage": "done"})
    watcher = _watcher(engine)

    async def scenario() -> bool:
        stepped = await wait_for_step(watcher, _never_disconnects, read_before, 5)
        await watcher.stop()
        return stepped

    assert asyncio.run(scenario())


def test_a_client_going_away_ends_its_wait_and_its_subscription(engine: Engine) -> None:
    [job_id] = _add_jobs(engine, 1)
    watcher = _watcher(engine)

    async def scenario() -> tuple[bool, float, int]:
        gone = asyncio.Event()
        messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

        async def receive() -> dict[str, Any]:
            message = next(messages, None)
            if message is not None:
                return message
            await gone.wait()
            return {"type": "http.disconnect"}

        asyncio.get_running_loop().call_later(0.2, gone.set)
        started = time.perf_counter()
        stepped = await wait_for_step(watcher, receive, _public(engine, job_id), 30)
        took = time.perf_counter() - started
        waiting = watcher.waiting
        await watcher.stop()
        return stepped, took, waiting

    stepped, took, waiting = asyncio.run(scenario())
    assert not stepped
    assert took < 1
    assert waiting == 0


def test_the_event_stream_sends_progress_then_the_finished_job(engine: Engine) -> None:
    [job_id] = _add_jobs(engine, 1)
    watcher = _watcher(engine)

    async def read_job() -> tuple[JobPublic, bool]:
        return _public(engine, job_id), True

    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()
        for delay, values in (
            (0.1, {"progress_fraction": 0.2}),
            (0.2, {"progress_fraction": 0.21}),
            (0.25, {"progress_stage": "step 2"}),
            (0.8, {"status": "succeeded", "progress_stage": "done", "progress_fraction": 1.0}),
        ):
            loop.call_later(delay, _set, engine, job_id, values)
        events = job_events(watcher, read_job, _public(engine, job_id), False, 30, nullcontext())
        async with asyncio.timeout(5):
            sent = [chunk async for chunk in events]
        await watcher.stop()
        return sent

    sent = asyncio.run(scenario())
    names = [chunk.split(b"\n")[0] for chunk in sent]
    assert names[0] == b"event: progress" and names[-1] == b"event: job"
    progress = [json.loads(chunk.split(b"data: ")[1]) for chunk in sent[:-1]]
    assert progress[0]["progress"] == {"fraction": 0.1, "stage": "step 1"}
    # The stage change is sent; the two fraction changes 0.1 s apart may be merged (≤ 4/s).
    assert progress[-1]["progress"] == {"fraction": 0.21, "stage": "step 2"}
    assert [event["status"] for event in progress] == ["running"] * len(progress)
    final = json.loads(sent[-1].split(b"data: ")[1])
    assert (final["id"], final["status"]) == (job_id, "succeeded")


def test_the_etag_changes_with_any_field_and_if_none_match_compares_it() -> None:
    tags = {job_etag(json.dumps({"status": status}).encode()) for status in ("queued", "running")}
    assert len(tags) == 2
    etag = job_etag(b'{"status": "queued"}')
    assert etag_matches(etag, etag)
    assert etag_matches(f'"other", W/{etag}', etag)
    assert etag_matches("*", etag)
    assert not etag_matches('"other"', etag)
    assert not etag_matches(None, etag)
