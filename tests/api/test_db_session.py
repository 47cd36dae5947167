"""SQLite transactions: readers never queue for the write lock, writers still take it up front."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text
from support.api import EmbeddedService

from service.db.session import make_engine, make_sessionmaker

# Far below SQLITE_BUSY_TIMEOUT_MS (30 s), which a reader queued behind the writer would wait.
READ_BOUND_S = 5.0


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'llfc.db'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE counter (value INTEGER)")
        connection.exec_driver_sql("INSERT INTO counter VALUES (1)")
    return engine


def _read_value(engine: Engine) -> int:
    with make_sessionmaker(engine, read_only=True)() as session:
        value = session.execute(text("SELECT value FROM counter")).scalar_one()
        session.commit()
        return int(value)


def test_read_sessions_do_not_wait_for_an_open_write_transaction(engine: Engine) -> None:
    writer = make_sessionmaker(engine)()
    try:
        writer.execute(text("UPDATE counter SET value = 2"))
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=2) as pool:
            values = [
                future.result(timeout=READ_BOUND_S)
                for future in [pool.submit(_read_value, engine) for _ in range(2)]
            ]
        elapsed = time.monotonic() - started
    finally:
        writer.rollback()
        writer.close()
    # Both readers see the last committed value, not the writer's uncommitted one.
    assert values == [1, 1]
    assert elapsed < READ_BOUND_S


def test_a_writing_session_waits_for_the_write_lock_before_it_reads(engine: Engine) -> None:
    first = make_sessionmaker(engine)()
    first.execute(text("UPDATE counter SET value = 2"))
    seen: list[int] = []

    def second_writer() -> None:
        with make_sessionmaker(engine)() as session:
            seen.append(int(session.execute(text("SELECT value FROM counter")).scalar_one()))
            session.execute(text("UPDATE counter SET value = value + 10"))
            session.commit()

    thread = threading.Thread(target=second_writer)
    try:
        thread.start()
        thread.join(timeout=0.5)
        # BEGIN IMMEDIATE: the second writer queues at its first statement, even a SELECT.
        assert thread.is_alive()
    finally:
        first.commit()
        first.close()
    thread.join(timeout=READ_BOUND_S)
    assert not thread.is_alive()
    # It read after the first writer committed, so its update builds on that one: no lost update.
    assert seen == [2]
    assert _read_value(engine) == 12


def test_gets_answer_while_another_process_holds_the_write_lock(
    embedded: EmbeddedService, alice: httpx.Client
) -> None:
    """Many concurrent polls go through while the database's write lock is taken elsewhere."""
    lock_holder = sqlite3.connect(embedded.data_dir / "llfc.db", isolation_level=None)
    lock_holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(
                pool.map(
                    lambda path: alice.get(path, timeout=READ_BOUND_S * 2).status_code,
                    ["/v1/jobs?limit=1", "/v1/checkpoints?limit=1"] * 20,
                )
            )
        elapsed = time.monotonic() - started
    finally:
        lock_holder.execute("ROLLBACK")
        lock_holder.close()
    assert statuses == [200] * 40
    assert elapsed < READ_BOUND_S * 2
