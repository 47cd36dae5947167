"""The stores of one test run: PostgreSQL databases and Redis servers that no other run touches.

Two test runs on one machine (two developers, or one beside CI or a benchmark) would otherwise
empty, migrate or read each other's database and Redis queue in the middle of a test. Each
database is named after this pytest process (``llfc_<purpose>_<pid>``), created empty and dropped
when the test is done; each Redis is a private ``redis-server`` on a free port. (The benchmarks
keep their own fixed database, ``llfc_bench``.)

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust; ``scripts/services`` starts it) and
``redis-server`` on the PATH.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic.command import upgrade
from sqlalchemy import Engine, create_engine, event, text

from llfc_cli.embedded import free_port
from service.db.migrate import alembic_config
from service.db.models import Owner
from service.db.session import make_engine, make_sessionmaker
from support.servers import service_env, wait_until

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def require_postgres_and_redis() -> None:
    """Skip the calling test or fixture unless PostgreSQL runs and redis-server is installed."""
    if not port_open(5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (scripts/services)")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


def _administer(*statements: str) -> None:
    admin = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        admin.dispose()


@contextmanager
def own_database(purpose: str) -> Iterator[str]:
    """A new, empty database of this test run; yields its URL and drops it on the way out.

    One left behind by an earlier run that was killed, under the same process id, is dropped
    first.
    """
    name = f"llfc_{purpose}_{os.getpid()}"
    drop = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    _administer(drop, f"CREATE DATABASE {name}")
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        _administer(drop)


class RedisServer:
    """A private ``redis-server`` on a free port, without persistence: a restart loses every
    message, as a broker that crashed without its append-only file would."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(lambda: port_open(self.port), 20, "redis-server to listen")

    def kill(self) -> None:
        """SIGKILL: whatever it held in memory is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def messages_waiting(self, queue: str = "llfc.cpu") -> int:
        """Messages waiting in the Celery queue ``queue`` (default: the jobs routed to 'cpu')."""
        import redis

        return int(redis.Redis(port=self.port).llen(queue))


@dataclass
class ProductionStores:
    """The run's own database and Redis, and the secret key of the `llfc` processes using them."""

    database_url: str
    redis: RedisServer
    secret_key: str

    def env(self, data_dir: Path, **settings: str) -> dict[str, str]:
        """The environment of an `llfc` process on these stores, with auth on, on the CPU."""
        return service_env(
            data_dir,
            LLFC_DATABASE_URL=self.database_url,
            LLFC_BROKER_URL=self.redis.url,
            LLFC_AUTH="on",
            LLFC_SECRET_KEY=self.secret_key,
            LLFC_DEVICE="cpu",
            **settings,
        )


@contextmanager
def production_stores(purpose: str, folder: Path) -> Iterator[ProductionStores]:
    """A new database (see :func:`own_database`) and a Redis writing into ``folder``, for as long
    as the block runs; skips the caller where PostgreSQL or redis-server is missing."""
    require_postgres_and_redis()
    redis = RedisServer(folder)
    redis.start()
    try:
        with own_database(purpose) as database_url:
            yield ProductionStores(database_url, redis, secrets.token_urlsafe(32))
    finally:
        redis.kill()


@contextmanager
def migrated_engine(url: str, owners: Mapping[str, str]) -> Iterator[Engine]:
    """An engine on the database at ``url``, migrated to the head revision and holding
    ``owners`` (id -> name); disposed afterwards."""
    upgrade(alembic_config(url), "head")
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            session.add_all(Owner(id=owner_id, name=name) for owner_id, name in owners.items())
            session.commit()
        yield engine
    finally:
        engine.dispose()


def count_statements(engine: Engine) -> list[str]:
    """The statements ``engine`` sends from now on, as a list that grows with them.

    SQLite's BEGIN is left out: it is ours (service/db/session.py) and costs no round trip; on
    PostgreSQL a lone read runs in autocommit mode and sends none.
    """
    statements: list[str] = []

    def record(*args: Any) -> None:
        if args[2] != "BEGIN":
            statements.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    return statements
