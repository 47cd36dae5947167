"""Database engines and sessions, one engine per process and URL.

SQLite (the embedded mode) is shared by the API and the worker process, so it runs in WAL mode
(readers never block the writer, nor each other). A session that may write starts every
transaction with ``BEGIN IMMEDIATE``, taking the single write lock up front: a transaction that
reads and then writes would otherwise fail at once with "database is locked" when the other
process wrote in between, instead of waiting its turn for ``busy_timeout``. A read-only session
(``make_sessionmaker(engine, read_only=True)``, what GET requests use) starts with a plain deferred
``BEGIN`` instead, which reads a snapshot without the lock; were it IMMEDIATE too, every poll
would queue behind every other poll and behind the worker's writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import CursorResult, Delete, Engine, Update, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from service.core.config import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
POSTGRES_CONNECT_TIMEOUT_S = 5
POSTGRES_LOCK_TIMEOUT_MS = 5_000
POSTGRES_POOL_SIZE = 40
"""Connections kept open: the API's sync handlers run on anyio's worker threads (40 by
default), each holding at most one session, so that many polls never wait for a connection."""
POSTGRES_POOL_OVERFLOW = 10
"""Extra connections for the rare request that opens a second session (a first owner's creation)."""
POSTGRES_POOL_RECYCLE_S = 1800
"""Connections older than this are replaced at checkout, before a server or proxy idle limit
closes them. No ``pool_pre_ping``: it costs a round trip on every checkout, i.e. every request;
a connection broken by a database restart fails one request instead, and SQLAlchemy then
discards every connection opened before it."""

READ_ONLY_OPTION = "llfc_read_only"
"""Execution option of a read-only session's connections (see :func:`make_sessionmaker`)."""

_engines: dict[tuple[int, str], Engine] = {}


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy so "begin" below decides how it starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_engine(url: str, *, pooled: bool = True) -> Engine:
    """A new engine for ``url`` with the per-dialect settings above.

    ``pooled=False`` keeps no connection open between uses (see :func:`short_lived_session`).
    """
    pool_args: dict[str, Any] = {} if pooled else {"poolclass": NullPool}
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **pool_args,
        )
        _configure_sqlite(engine)
        return engine
    if not pooled:
        # Never wait long for a lock or a connection: the caller's loop has other work.
        pool_args["connect_args"] = {
            "connect_timeout": POSTGRES_CONNECT_TIMEOUT_S,
            "options": f"-c lock_timeout={POSTGRES_LOCK_TIMEOUT_MS}",
        }
    if pooled:
        pool_args.update(
            pool_size=POSTGRES_POOL_SIZE,
            max_overflow=POSTGRES_POOL_OVERFLOW,
            pool_recycle=POSTGRES_POOL_RECYCLE_S,
        )
    return create_engine(url, **pool_args)


def get_engine() -> Engine:
    """This process's engine for the configured database.

    Keyed by process id as well: a forked worker child must open its own connections rather
    than share the parent's sockets.
    """
    url = get_settings().resolved_database_url
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        engine = make_engine(url)
        _engines[key] = engine
    return engine


def make_sessionmaker(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions on ``engine``; ``read_only`` ones must not write (on SQLite they would fail with
    "database is locked" whenever another connection wrote since they first read)."""
    bind = engine.execution_options(**{READ_ONLY_OPTION: True}) if read_only else engine
    return sessionmaker(bind=bind, expire_on_commit=False)


@contextmanager
def _committed(session: Session) -> Iterator[Session]:
    """``session``, committed on success, rolled back on error, closed in every case."""
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error (for the worker and the CLI)."""
    with _committed(make_sessionmaker(get_engine())()) as session:
        yield session


@contextmanager
def short_lived_session() -> Iterator[Session]:
    """A session on a connection opened now and closed at the end (commits on success).

    For the Celery main process, which forks pool children at any time: a child must not
    inherit an open database connection that the parent goes on using. On PostgreSQL it waits
    at most a few seconds for a connection or a row lock (a stuck child may hold one).
    """
    engine = make_engine(get_settings().resolved_database_url, pooled=False)
    try:
        with _committed(make_sessionmaker(engine)()) as session:
            yield session
    finally:
        engine.dispose()


def rows_changed(session: Session, statement: Update | Delete) -> int:
    """Run an UPDATE or DELETE and return how many rows it changed (0 when its condition did not
    hold)."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount
