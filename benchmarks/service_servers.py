"""Starting and stopping the servers the service benchmarks measure, and reading their memory.

The environment and one-shot ``llfc`` commands are the end-to-end tests' (``support.servers`` in
tests/, on the path when a benchmark runs with ``PYTHONPATH=tests``, as the smoke tests run them).

Every server is a real process (``llfc serve``, ``llfc api``, ``llfc worker`` or a baseline
defined in a benchmark script) in its own session, with its output in a log file, so stopping it
never touches anything else and a failure shows its log. Callers stop what they start in a
``finally`` or through :class:`ServerGroup`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from llfc_cli.embedded import free_port as free_port  # the benchmark scripts import it from here
from llfc_cli.embedded import wait_until_ready

try:
    from support.servers import REPOSITORY_ROOT, llfc_env
    from support.servers import create_key as create_key  # re-exported for the benchmark scripts
    from support.servers import run_llfc as run_llfc
except ModuleNotFoundError as error:  # run without the tests' helpers on the path
    raise ModuleNotFoundError(
        "The service benchmarks share tests/support: run them from the repository root as "
        "PYTHONPATH=tests python benchmarks/<name>.py"
    ) from error

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/llfc_bench"
REDIS_URL = "redis://127.0.0.1:6379/11"
BENCH_SECRET_KEY = "llfc-benchmark-secret-key-not-for-production"
STOP_WAIT_S = 30.0


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def machine_load() -> dict[str, float]:
    """How busy the machine was (1-minute load average against its CPUs) when a record was
    taken: the service shares the cores with its clients, its database and anything else."""
    return {"cpus": float(os.cpu_count() or 1), "load_average_1m": round(os.getloadavg()[0], 2)}


def benchmark_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The tests' clean ``llfc_env`` on the CPU, logs at ``warning`` (a line per request would
    cost the measured server time), then ``settings``."""
    return llfc_env(data_dir, LLFC_DEVICE="cpu", LLFC_LOG_LEVEL="warning", **settings)


def reset_postgres(url: str) -> None:
    """Empty the public schema of the benchmark's own database, created first on a machine that
    never ran the benchmark, so every run starts alike."""
    from sqlalchemy import create_engine, make_url, text

    database = make_url(url).database
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database}
            )
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{database}"'))
    finally:
        admin.dispose()
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


def flush_redis(url: str) -> None:
    """Empty the benchmark's own Redis database."""
    import redis

    redis.Redis.from_url(url).flushdb()


def proc_status_kib(pid: int, *field_names: str) -> dict[str, int]:
    """Memory lines of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, ``RssAnon``...) in KiB.

    ``VmRSS`` = ``RssAnon`` (the process's own memory) + ``RssFile`` (pages of mapped files,
    page cache the kernel can drop) + ``RssShmem``; ``VmHWM`` is the peak of ``VmRSS``.
    """
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in field_names:
                values[name] = int(rest.split()[0])
    missing = set(field_names) - set(values)
    if missing:
        raise RuntimeError(f"/proc/{pid}/status has no {', '.join(sorted(missing))} line")
    return values


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 on)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name in parentheses may hold spaces; the fields after it are fixed.
        return stat.read().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` and its live descendants have used so far (all
    their threads): an API with several worker processes counts as a whole."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(
                    int(entry.name)
                )
            except (FileNotFoundError, ProcessLookupError):
                continue  # ended meanwhile
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = _stat_fields(current)
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
        pending += children.get(current, [])
    return total / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> None:
    """Make ``VmHWM`` of process ``pid`` start again from its current resident set."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


@dataclass
class Server:
    """A long-running process in its own session, its output going to ``log_path``."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    base_url: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, characters: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:]

    def stop(self) -> None:
        """SIGINT (a clean stop), then SIGKILL to the whole session if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_WAIT_S)
        # Children (Celery's pool, a supervised worker) share the session; none may outlive it.
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def wait_ready(self, path: str = "/healthz", timeout: float = 120) -> None:
        """Poll ``path`` until it answers 200; fail with the log if the process dies first."""
        assert self.base_url is not None
        try:
            wait_until_ready(self.base_url, self.popen, timeout, path)
        except RuntimeError as error:
            raise RuntimeError(f"{self.name}: {error}\n{self.log_tail()}") from None


@dataclass
class ServerGroup:
    """Every server a benchmark started, stopped together in reverse order."""

    log_dir: Path
    servers: list[Server] = field(default_factory=list)

    def start(
        self, name: str, command: list[str], env: Mapping[str, str], port: int | None = None
    ) -> Server:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                command,
                cwd=REPOSITORY_ROOT,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base_url = f"http://127.0.0.1:{port}" if port is not None else None
        server = Server(name, popen, log_path, base_url)
        self.servers.append(server)
        return server

    def start_llfc(
        self, name: str, args: list[str], env: Mapping[str, str], port: int | None = None
    ) -> Server:
        return self.start(name, [sys.executable, "-m", "llfc_cli", *args], env, port)

    def stop(self, server: Server) -> None:
        server.stop()
        self.servers.remove(server)

    def stop_all(self) -> None:
        while self.servers:
            self.stop(self.servers[-1])


@contextmanager
def server_group(log_dir: Path) -> Iterator[ServerGroup]:
    """A :class:`ServerGroup` whose servers are all stopped on the way out, error or not."""
    group = ServerGroup(log_dir)
    try:
        yield group
    except BaseException:
        # The logs live in a temporary folder: show them before it goes.
        for server in group.servers:
            print(f"--- {server.name} log ---\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        group.stop_all()
