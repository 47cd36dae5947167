"""Running the Alembic migrations from code (``llfc migrate``, ``llfc serve``) and checking them."""

from __future__ import annotations

import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from service.core.config import get_settings
from service.db.session import make_engine

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(database_url: str | None = None) -> Config:
    """The Alembic configuration of ``alembic.ini``, pointed at ``database_url`` if given."""
    config = Config(str(REPOSITORY_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPOSITORY_ROOT / "migrations"))
    # The caller configures logging; alembic.ini's logging would replace it.
    config.attributes["configure_logging"] = False
    if database_url is not None:
        config.attributes["database_url"] = database_url
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def wait_for_database(url: str, timeout_s: float) -> None:
    """Retry connecting until the database answers (a container may still be starting)."""
    engine = make_engine(url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                return
            except OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)
    finally:
        engine.dispose()


def upgrade(revision: str = "head", wait_s: float = 0.0) -> None:
    """Bring the configured database to ``revision``, creating the SQLite folder if needed."""
    settings = get_settings()
    settings.create_data_dir()
    url = settings.resolved_database_url
    if wait_s > 0:
        wait_for_database(url, wait_s)
    command.upgrade(alembic_config(url), revision)


def downgrade(revision: str) -> None:
    command.downgrade(alembic_config(get_settings().resolved_database_url), revision)
