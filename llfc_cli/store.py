"""The database of the server commands: readied before a command uses it, its failures in one line.

The embedded database (SQLite in the data folder) is created and migrated on first use, as
``llfc serve`` does, so ``llfc keys create`` works in a fresh folder. A production database is
never migrated implicitly (``llfc migrate`` is a deliberate step, run once per release): a command
finding it behind this version's schema stops with a sentence saying to run ``llfc migrate``. A
database that cannot be reached, or a URL that names none, is one sentence too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from service.core.config import Settings

URL_EXAMPLE = "postgresql+psycopg://user:password@host:5432/llfc"
"""What a production ``LLFC_DATABASE_URL`` looks like, for the sentences below."""


def _first_line(error: BaseException) -> str:
    """The first line of an error's message: a driver's message goes on with hints and SQL."""
    # SQLAlchemy's own text wraps the driver's and appends a link; the driver's error is plainer.
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(cause).__name__


def database_name(url: str) -> str:
    """``url`` as a person may see it: the password hidden, or the file of a SQLite database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return "LLFC_DATABASE_URL"
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or "an in-memory SQLite database"
    return parsed.render_as_string(hide_password=True)


def check_database_url(url: str) -> None:
    """Refuse a URL that SQLAlchemy cannot parse, or whose dialect or driver is not installed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url).get_dialect().import_dbapi()
    except (ArgumentError, ImportError) as error:
        raise click.ClickException(
            f"LLFC_DATABASE_URL is not a database this version of llfc can use "
            f"({_first_line(error)}); write it as {URL_EXAMPLE}."
        ) from error


def describe_database_error(error: BaseException, url: str) -> str:
    """One sentence for a database error met while a command ran."""
    from sqlalchemy.exc import OperationalError

    where = database_name(url)
    if not isinstance(error, OperationalError):
        return f"The database {where} refused the command ({_first_line(error)})."
    if url.startswith("sqlite"):
        return (
            f"The database {where} cannot be used ({_first_line(error)}); check that "
            f"LLFC_DATA_DIR is a folder you may write to."
        )
    return (
        f"The database {where} cannot be used ({_first_line(error)}); check that it is "
        f"running and that LLFC_DATABASE_URL names it."
    )


def _schema_problem(url: str) -> str | None:
    """Why the schema of the production database at ``url`` is not this version's, or None."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from service.db.migrate import alembic_config, current_revision
    from service.db.session import make_engine

    # Unpooled: its connect timeout bounds the wait for a host that drops packets.
    engine = make_engine(url, pooled=False)
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    scripts = ScriptDirectory.from_config(alembic_config())
    head = scripts.get_current_head()
    where = database_name(url)
    if revision == head:
        return None
    if revision is None:
        return f"The database {where} has no LLFC schema yet; run `llfc migrate` first."
    try:
        scripts.get_revision(revision)
    except CommandError:
        return (
            f"The database {where} is at schema revision {revision}, which this version of "
            f"llfc does not know (it was migrated by a newer one); upgrade llfc."
        )
    return (
        f"The database {where} is at schema revision {revision} and this version of llfc "
        f"needs {head}; run `llfc migrate` first."
    )


def prepare_database(settings: Settings) -> None:
    """Make the configured database ready for a command, or stop it with one sentence.

    Embedded: create the data folder and migrate its SQLite file (quick when already current).
    Production: check that the schema is this version's; never migrate it here.
    """
    url = settings.resolved_database_url
    check_database_url(url)
    if settings.is_sqlite:
        from service.db import migrate

        migrate.upgrade()
        return
    problem = _schema_problem(url)
    if problem is not None:
        raise click.ClickException(problem)


class StoreCommand(click.Command):
    """A server command whose database and file-system failures are one ``Error:`` line."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return super().invoke(ctx)
        except SQLAlchemyError as error:
            from service.core.config import get_settings

            url = get_settings().resolved_database_url
            raise click.ClickException(describe_database_error(error, url)) from error
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            raise click.ClickException(f"{where}{error.strerror or error}") from error
