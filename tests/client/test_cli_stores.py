"""Every `llfc` command on a store that is not ready: a fresh embedded folder, an unmigrated
PostgreSQL database, a database that is down or a URL that names none, and (for the commands that
talk to a service) a service that is not running. Each either works or exits with one sentence,
never a traceback.

The tables below name every command of `llfc --help`, subcommands included; a command added
without a row fails :func:`test_the_tables_name_every_llfc_command`, so none goes untested silently.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from sqlalchemy import create_engine
from support.servers import llfc, service_env, start, wait_ready, wait_until
from support.stores import own_database, port_open

from llfc_cli.embedded import free_port
from llfc_client.cli import main
from service.db.migrate import current_revision, head_revision

CommandPath = tuple[str, ...]

MIGRATE_FIRST = "run `llfc migrate` first"
CANNOT_REACH_SERVICE = "Could not reach the LLFC service"


@dataclass(frozen=True)
class StoreCommand:
    """A command that uses the database and runs to completion."""

    args: tuple[str, ...]
    fresh_folder_error: str | None = None
    """Part of the one error it must give on a fresh folder; None: it must succeed there."""


@dataclass(frozen=True)
class ServingCommand:
    """A command that uses the database and serves until stopped."""

    args: tuple[str, ...]
    ready_log_line: str | None = None
    """Printed once it serves (a worker); None: it answers GET /readyz with 200 instead."""


STORE_COMMANDS: dict[CommandPath, StoreCommand] = {
    ("keys", "create"): StoreCommand(("--owner", "alice")),
    ("keys", "list"): StoreCommand(()),
    ("keys", "revoke"): StoreCommand(("llfc_abc",), "No active key has the prefix"),
    ("requeue",): StoreCommand(()),
    ("migrate",): StoreCommand(("--wait", "1")),
}
SERVING_COMMANDS: dict[CommandPath, ServingCommand] = {
    ("serve",): ServingCommand(("--port", "{port}")),
    ("api",): ServingCommand(("--port", "{port}")),
    ("worker",): ServingCommand((), ready_log_line=" ready."),
}
SERVICE_COMMANDS: dict[CommandPath, tuple[str, ...]] = {
    ("upload",): ("{file}", "--arch", '{"name": "mlp", "widths": [64, 10]}'),
    ("upload-dataset",): ("{file}",),
    ("datasets",): (),
    ("submit",): ("analyze", "ckpt_a", "ckpt_b", "--dataset", "builtin:digits"),
    ("analyze",): ("--a", "ckpt_a", "--b", "ckpt_b", "--dataset", "builtin:digits"),
    ("jobs",): (),
    ("status",): ("job_x",),
    ("wait",): ("job_x", "--timeout", "5"),
    ("results",): ("job_x",),
    ("cancel",): ("job_x",),
    ("download",): ("job_x", "--output", "{folder}"),
    ("inspect",): ('{"name": "mlp", "widths": [4, 2]}',),
    ("checkpoints", "list"): (),
    ("checkpoints", "show"): ("ckpt_x",),
    ("checkpoints", "delete"): ("ckpt_x",),
    ("demo",): ("--url", "{url}", "--out", "{folder}", "--small"),
}
"""Commands that use no database but a running service (LLFC_URL), with their arguments."""

NOT_RUN_ON_AN_UNMIGRATED_DATABASE: dict[CommandPath, str] = {
    ("migrate",): "migrating it is what the command does: "
    "test_migrate_brings_an_unmigrated_database_to_the_head_revision",
    ("serve",): "it migrates the database itself before serving (what `llfc migrate` does, "
    "run in test_migrate_brings_an_unmigrated_database_to_the_head_revision)",
}
DATABASE_COMMAND_ARGS: dict[CommandPath, tuple[str, ...]] = {
    **{path: command.args for path, command in STORE_COMMANDS.items()},
    **{path: command.args for path, command in SERVING_COMMANDS.items()},
}
DATABASE_COMMANDS = list(DATABASE_COMMAND_ARGS)


def _leaf_commands(group: click.Group, prefix: CommandPath = ()) -> Iterator[CommandPath]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def _ids(paths: list[CommandPath]) -> list[str]:
    return [" ".join(path) for path in paths]


def _args(path: CommandPath, args: tuple[str, ...], folder: Path, url: str = "") -> list[str]:
    file = folder / "upload.bin"
    file.write_bytes(b"\0" * 64)
    values = {
        "{port}": str(free_port()),
        "{file}": str(file),
        "{folder}": str(folder),
        "{url}": url,
    }
    return [*path, *(values.get(arg, arg) for arg in args)]


def assert_one_sentence_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 1 and, as the last line on stderr, the only ``Error:`` line, holding each
    fragment; no traceback anywhere."""
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert done.returncode == 1, output
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def _require_postgres() -> None:
    if not port_open(5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (scripts/services)")


def _production_env(data_dir: Path, database_url: str) -> dict[str, str]:
    return service_env(
        data_dir,
        LLFC_DATABASE_URL=database_url,
        LLFC_AUTH="on",
        LLFC_SECRET_KEY=secrets.token_urlsafe(32),
        LLFC_DEVICE="cpu",
    )


@pytest.fixture()
def unmigrated_database() -> Iterator[str]:
    """A new, empty PostgreSQL database: what a production install has before `llfc migrate`."""
    _require_postgres()
    with own_database("unmigrated") as url:
        yield url


def test_the_tables_name_every_llfc_command() -> None:
    tables = [*STORE_COMMANDS, *SERVING_COMMANDS, *SERVICE_COMMANDS]
    assert len(tables) == len(set(tables)), "a command is in two tables"
    assert sorted(_leaf_commands(main)) == sorted(tables)
    assert set(NOT_RUN_ON_AN_UNMIGRATED_DATABASE) <= set(DATABASE_COMMANDS)


@pytest.mark.parametrize("path", list(STORE_COMMANDS), ids=_ids(list(STORE_COMMANDS)))
def test_a_store_command_works_on_a_fresh_embedded_folder(
    path: CommandPath, tmp_path: Path
) -> None:
    command = STORE_COMMANDS[path]
    data_dir = tmp_path / "not-yet-created"
    done = llfc(*_args(path, command.args, tmp_path), env=service_env(data_dir))
    if command.fresh_folder_error is None:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
    else:
        assert_one_sentence_error(done, command.fresh_folder_error)
    engine = create_engine(f"sqlite:///{data_dir / 'llfc.db'}")
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("path", list(SERVING_COMMANDS), ids=_ids(list(SERVING_COMMANDS)))
def test_a_serving_command_starts_on_a_fresh_embedded_folder(
    path: CommandPath, tmp_path: Path
) -> None:
    command = SERVING_COMMANDS[path]
    args = _args(path, command.args, tmp_path)
    env = service_env(tmp_path / "not-yet-created", LLFC_DEVICE="cpu")
    process = start(args, env, tmp_path / "command.log")
    try:
        if command.ready_log_line is None:
            wait_ready(f"http://127.0.0.1:{args[args.index('--port') + 1]}", process)
        else:
            line = command.ready_log_line
            wait_until(lambda: line in process.log() or process.popen.poll() is not None, 120, line)
            assert process.popen.poll() is None, process.log()
    finally:
        process.stop(signal.SIGTERM)
    assert "Traceback" not in process.log(), process.log()


@pytest.mark.postgres
@pytest.mark.parametrize("path", DATABASE_COMMANDS, ids=_ids(DATABASE_COMMANDS))
def test_a_command_on_an_unmigrated_database_says_to_run_migrate(
    path: CommandPath, unmigrated_database: str, tmp_path: Path
) -> None:
    if path in NOT_RUN_ON_AN_UNMIGRATED_DATABASE:
        pytest.skip(NOT_RUN_ON_AN_UNMIGRATED_DATABASE[path])
    env = _production_env(tmp_path, unmigrated_database)
    done = llfc(*_args(path, DATABASE_COMMAND_ARGS[path], tmp_path), env=env, timeout=60)
    assert_one_sentence_error(done, "has no LLFC schema yet", MIGRATE_FIRST)
    engine = create_engine(unmigrated_database)
    try:
        assert current_revision(engine) is None, "the command migrated a production database"
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_migrate_brings_an_unmigrated_database_to_the_head_revision(
    unmigrated_database: str, tmp_path: Path
) -> None:
    env = _production_env(tmp_path, unmigrated_database)
    done = llfc("migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert llfc("keys", "list", env=env).returncode == 0


@pytest.mark.postgres
def test_a_command_on_a_database_one_revision_behind_says_to_run_migrate(
    unmigrated_database: str, tmp_path: Path
) -> None:
    env = _production_env(tmp_path, unmigrated_database)
    assert llfc("migrate", "--revision", "0002", env=env).returncode == 0
    assert_one_sentence_error(
        llfc("keys", "list", env=env), "is at schema revision 0002", MIGRATE_FIRST
    )


@pytest.mark.parametrize(
    ("database_url", "fragments"),
    [
        (
            "postgresql+psycopg://postgres@127.0.0.1:{port}/llfc",
            ("cannot be used", "Connection refused", "check that it is running"),
        ),
        ("not a url", ("LLFC_DATABASE_URL is not a database", "postgresql+psycopg://")),
        ("oracle+nodriver://db/llfc", ("LLFC_DATABASE_URL is not a database", "nodriver")),
    ],
    ids=["database down", "unparsable URL", "unknown driver"],
)
@pytest.mark.parametrize("path", DATABASE_COMMANDS, ids=_ids(DATABASE_COMMANDS))
def test_a_command_on_a_database_it_cannot_use_says_why_in_one_sentence(
    path: CommandPath, database_url: str, fragments: tuple[str, ...], tmp_path: Path
) -> None:
    env = _production_env(tmp_path, database_url.format(port=free_port()))
    done = llfc(*_args(path, DATABASE_COMMAND_ARGS[path], tmp_path), env=env, timeout=60)
    assert_one_sentence_error(done, *fragments)


@pytest.mark.parametrize("path", list(SERVICE_COMMANDS), ids=_ids(list(SERVICE_COMMANDS)))
def test_a_service_command_without_a_running_service_says_so_in_one_sentence(
    path: CommandPath, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    args = _args(path, SERVICE_COMMANDS[path], tmp_path, url)
    done = llfc(*args, env=service_env(tmp_path / "data", LLFC_URL=url), timeout=60)
    assert_one_sentence_error(done, CANNOT_REACH_SERVICE, url)


@pytest.mark.parametrize("owner", ["", "   ", "a\nb", "x" * 201])
def test_keys_create_refuses_a_blank_or_unprintable_owner(owner: str, tmp_path: Path) -> None:
    done = llfc("keys", "create", "--owner", owner, env=service_env(tmp_path / "data"))
    assert done.returncode == 2
    assert "must be a printable name of 1 to 200 characters" in done.stderr
    assert not (tmp_path / "data").exists()


def test_a_data_dir_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    done = llfc("keys", "create", "--owner", "alice", env=service_env(a_file))
    assert done.returncode == 1
    assert "LLFC_DATA_DIR must name a folder, and this is a file" in done.stderr
