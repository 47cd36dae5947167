"""Server commands: ``serve`` (embedded), ``api``, ``worker``, ``migrate``, ``requeue``, ``keys``.

Heavy modules (the service, Celery, torch) are imported inside each command, after the settings
were validated, so a configuration mistake is reported as one sentence and ``llfc --help`` stays
fast.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

import click
from pydantic import ValidationError
from pydantic_settings import SettingsError

from llfc_cli.store import StoreCommand, check_database_url, prepare_database

if TYPE_CHECKING:
    from service.core.config import Settings

logger = logging.getLogger("llfc")

WORKER_KILL_WAIT_S = 5.0
WORKER_RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
MAX_OWNER_NAME = 200
"""The longest owner name (the owners table's column)."""


def load_settings() -> Settings:
    """The validated settings, or a one-sentence error for the user."""
    from service.core.config import get_settings

    try:
        return get_settings()
    except SettingsError as error:
        # A JSON setting that does not parse (LLFC_QUEUE_ROUTES, LLFC_BROKER_TRANSPORT_OPTIONS).
        raise click.ClickException(f"Invalid configuration: {error}; it must be JSON.") from error
    except ValidationError as error:
        reasons = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or 'settings'}: "
            f"{str(item['msg']).removeprefix('Value error, ')}"
            for item in error.errors()
        )
        raise click.ClickException(f"Invalid configuration: {reasons}") from error


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic lists its plugins at INFO on every start; the migrations themselves stay visible.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def run_api(host: str, port: int, settings: Settings) -> None:
    """Serve the API with uvicorn until SIGINT or SIGTERM, then return normally.

    ``LLFC_API_WORKERS`` processes share the port (uvicorn's supervisor starts them and replaces
    one that dies); their request counters are summed at every scrape (``service/shared_metrics``).
    The maintenance sweep (``service/maintenance.py``: lost jobs taken back, undelivered ones
    published again, abandoned partial uploads removed) runs alongside, first at once, in this
    process only.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from service import shared_metrics
    from service.api.slow_clients import GuardedHttpProtocol
    from service.maintenance import MaintenanceLoop

    def note_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("Received %s; stopping", signal.Signals(signum).name)

    # uvicorn handles SIGINT/SIGTERM while it runs and raises them again once it stopped; these
    # handlers take that second delivery, so the caller's cleanup (stopping the worker) runs.
    signal.signal(signal.SIGINT, note_stop)
    signal.signal(signal.SIGTERM, note_stop)
    config = uvicorn.Config(
        "service.main:app",
        host=host,
        port=port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        workers=settings.api_workers,
        # Slow clients: header and body read timeouts (GuardedHttpProtocol) and a cap on open
        # connections, past which requests get 503.
        http=GuardedHttpProtocol,
        limit_concurrency=settings.max_connections,
    )
    shared_metrics.clear(settings.metrics_dir)
    maintenance = MaintenanceLoop(settings)
    maintenance.start()
    try:
        if settings.api_workers > 1:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            uvicorn.Server(config).run()
    finally:
        maintenance.stop()


def worker_command() -> list[str]:
    return [sys.executable, "-m", "llfc_cli", "worker"]


def embedded_worker_env(settings: Settings) -> dict[str, str]:
    """The environment of ``serve``'s worker: it consumes every routed queue, being the only one."""
    return {**os.environ, "LLFC_WORKER_QUEUES": ",".join(settings.routed_queues)}


class WorkerSupervisor:
    """Runs ``llfc worker`` as a child process group, restarts it if it dies, stops it cleanly."""

    def __init__(self, command: list[str], env: dict[str, str], stop_grace_s: float) -> None:
        self.command = command
        self.env = env
        self.stop_grace_s = stop_grace_s
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="worker-watch", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._watcher.start()

    def _spawn(self) -> None:
        # Its own session: Ctrl-C in the terminal reaches only us, and we stop the worker
        # in order (warm, then cold) instead of both racing to exit.
        self.process = subprocess.Popen(self.command, env=self.env, start_new_session=True)
        logger.info("Worker started (pid %d)", self.process.pid)

    def _watch(self) -> None:
        restarts = 0
        while not self._stopping.wait(1.0):
            with self._lock:
                if self._stopping.is_set() or self.process is None:
                    return
                code = self.process.poll()
                if code is None:
                    continue
                delay = WORKER_RESTART_DELAYS_S[min(restarts, len(WORKER_RESTART_DELAYS_S) - 1)]
                logger.error("The worker exited with code %s; restarting it in %gs", code, delay)
            if self._stopping.wait(delay):
                return
            with self._lock:
                if not self._stopping.is_set():
                    self._spawn()
                    restarts += 1

    def _signal_group(self, signum: int) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            return

    def stop(self) -> None:
        """Warm shutdown (finish the current task) for a grace period, then cold, then kill.

        A job cut short is queued again by ``serve`` and runs from the start next time.
        """
        with self._lock:
            self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join()
        process = self.process
        if process is None or process.poll() is not None:
            return
        # Celery's main process stops its pool children itself: signal it alone first.
        steps = (
            (signal.SIGTERM, self.stop_grace_s),
            (signal.SIGQUIT, WORKER_KILL_WAIT_S),
        )
        for signum, wait_s in steps:
            process.send_signal(signum)
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                logger.warning("The worker did not stop after %s", signal.Signals(signum).name)
        else:
            self._signal_group(signal.SIGKILL)
            process.wait()
        # Pool children share the group; none may outlive their main process.
        self._signal_group(signal.SIGKILL)
        logger.info("Worker stopped")


@click.command(cls=StoreCommand)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
def serve(host: str, port: int) -> None:
    """Run everything on this machine: migrate, then the API and one worker, until Ctrl-C.

    Uses LLFC_DATA_DIR for the SQLite database, the blobs and the message queue. Jobs left
    queued or running by a previous run are queued again.
    """
    settings = load_settings()
    configure_logging(settings)
    from service.broker import purge_queues
    from service.db import migrate
    from service.db.session import session_scope
    from service.queue import publish_queued, requeue_interrupted

    check_database_url(settings.resolved_database_url)
    migrate.upgrade()
    with session_scope() as session:
        interrupted = requeue_interrupted(session, settings)
    if interrupted:
        logger.info("Queued again %d job(s) a previous run left running", len(interrupted))
    if settings.uses_filesystem_broker:
        # The job rows are the record: rebuild the queue from them instead of adding copies.
        purge_queues(settings.routed_queues)
    supervisor = WorkerSupervisor(
        worker_command(), embedded_worker_env(settings), settings.worker_stop_grace_seconds
    )
    supervisor.start()
    try:
        with session_scope() as session:
            published = publish_queued(session)
        if published:
            logger.info("Published %d queued job(s)", published)
        run_api(host, port, settings)
    finally:
        supervisor.stop()
        with session_scope() as session:
            requeue_interrupted(session, settings)
    logger.info("Stopped")


@click.command(cls=StoreCommand)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
def api(host: str, port: int) -> None:
    """Run the HTTP API only (production: workers run separately; migrate first)."""
    settings = load_settings()
    configure_logging(settings)
    prepare_database(settings)
    run_api(host, port, settings)


@click.command(cls=StoreCommand)
def worker() -> None:
    """Run a Celery worker: prefork, LLFC_WORKER_CONCURRENCY children (one per GPU), consuming
    the queues LLFC_WORKER_QUEUES names (default all)."""
    settings = load_settings()
    configure_logging(settings)
    prepare_database(settings)
    from service.broker import consumed_celery_queues
    from service.core.config import GPU_QUEUE
    from worker.tasks import run_worker

    queues = settings.consumed_queues
    if settings.device == "cpu" and GPU_QUEUE in queues and settings.worker_queues is not None:
        logger.warning(
            "This worker computes on the CPU (LLFC_DEVICE=cpu) yet LLFC_WORKER_QUEUES names the "
            "queue %r: the jobs routed there for a GPU (training, STE, large models) will run "
            "here, slowly. Leave %r out on CPU workers.",
            GPU_QUEUE,
            GPU_QUEUE,
        )
    logger.info("Consuming the queues %s", ", ".join(queues))

    run_worker(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={settings.worker_concurrency}",
            f"--queues={','.join(consumed_celery_queues(queues))}",
            f"--loglevel={settings.log_level.upper()}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


@click.command(cls=StoreCommand)
@click.option("--revision", default="head", show_default=True, help="Alembic revision.")
@click.option(
    "--wait",
    "wait_s",
    default=30.0,
    show_default=True,
    type=float,
    help="Seconds to wait for the database to accept connections.",
)
def migrate(revision: str, wait_s: float) -> None:
    """Bring the database schema up to date (run before `llfc api` and `llfc worker`)."""
    settings = load_settings()
    configure_logging(settings)
    from service.db import migrate as migrations

    check_database_url(settings.resolved_database_url)
    migrations.upgrade(revision, wait_s=wait_s)
    click.echo(f"The database is at revision {revision}.")


@click.command(cls=StoreCommand)
def requeue() -> None:
    """Publish every queued job again (after a broker outage); duplicates are harmless."""
    settings = load_settings()
    configure_logging(settings)
    prepare_database(settings)
    from service.db.session import session_scope
    from service.queue import publish_queued

    with session_scope() as session:
        count = publish_queued(session)
    click.echo(f"Published {count} queued job(s).")


@click.group()
def keys() -> None:
    """Create, list and revoke API keys."""


def _owner_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An owner's name: printable, not blank, at most 200 characters (what the table holds)."""
    name = value.strip()
    if not name or len(name) > MAX_OWNER_NAME or not name.isprintable():
        raise click.BadParameter(
            f"must be a printable name of 1 to {MAX_OWNER_NAME} characters, got {value!r}."
        )
    return name


@keys.command("create", cls=StoreCommand)
@click.option(
    "--owner", required=True, callback=_owner_name, help="The owner's name; created if new."
)
def create_key(owner: str) -> None:
    """Create an API key for OWNER and print it, alone on the last line; only its hash is kept."""
    settings = load_settings()
    prepare_database(settings)
    from service.db.session import session_scope
    from service.security import create_api_key

    with session_scope() as session:
        key = create_api_key(session, owner, settings.secret_key.get_secret_value())
    if not settings.auth:
        click.echo("Note: LLFC_AUTH is off, so this service does not ask for keys.", err=True)
    click.echo(f"API key for owner {owner!r} (shown once; keep it secret):")
    click.echo(key)


@keys.command("list", cls=StoreCommand)
def list_keys() -> None:
    """List keys by owner and prefix (the keys themselves are not stored)."""
    prepare_database(load_settings())
    from sqlalchemy import select

    from service.db.models import ApiKey, Owner
    from service.db.session import session_scope

    with session_scope() as session:
        rows = session.execute(
            select(Owner.name, ApiKey.prefix, ApiKey.created_at, ApiKey.revoked_at)
            .join(Owner, Owner.id == ApiKey.owner_id)
            .order_by(ApiKey.created_at)
        ).tuples()
        for owner, prefix, created_at, revoked_at in rows:
            state = f"revoked {revoked_at:%Y-%m-%d %H:%M}" if revoked_at else "active"
            click.echo(f"{owner}\t{prefix}...\t{created_at:%Y-%m-%d %H:%M}\t{state}")


@keys.command("revoke", cls=StoreCommand)
@click.argument("prefix")
def revoke_key(prefix: str) -> None:
    """Revoke the active key(s) starting with PREFIX (as shown by `llfc keys list`)."""
    prepare_database(load_settings())
    from sqlalchemy import update

    from service.db.models import ApiKey, utcnow
    from service.db.session import rows_changed, session_scope

    with session_scope() as session:
        count = rows_changed(
            session,
            update(ApiKey)
            .where(ApiKey.prefix == prefix.removesuffix("..."), ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow()),
        )
    if not count:
        raise click.ClickException(f"No active key has the prefix {prefix!r}.")
    click.echo(f"Revoked {count} key(s).")


SERVER_COMMANDS: list[click.Command] = [serve, api, worker, migrate, requeue, keys]
