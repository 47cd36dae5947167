"""Real `llfc` processes for the end-to-end tests and the service benchmarks: their environment,
one-shot commands, servers on a free port waited for until they answer, and stopped so that none
outlives its test. The benchmarks import this module too (they run with ``PYTHONPATH=tests``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llfc_cli.embedded import free_port, wait_until_ready

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
TEST_SECRET_KEY = "llfc-test-secret-key-0123456789"
"""The pepper of every test service: one is required whenever auth is on."""
TEST_METRICS_TOKEN = "llfc-test-metrics-token"
"""The scrape token of every test service: with auth on, GET /metrics needs it."""


def llfc_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any LLFC_* variable, plus the data folder and the
    given settings: a service configured by nothing but what its caller says."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LLFC_")}
    env["LLFC_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """:func:`llfc_env` with the test secret key and scrape token, then the given settings
    (which may replace either)."""
    defaults = {"LLFC_SECRET_KEY": TEST_SECRET_KEY, "LLFC_METRICS_TOKEN": TEST_METRICS_TOKEN}
    return llfc_env(data_dir, **{**defaults, **settings})


def llfc(
    *args: str, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run one `llfc` command to completion, as a user's shell would."""
    return subprocess.run(
        [sys.executable, "-m", "llfc_cli", *args],
        cwd=REPOSITORY_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_llfc(*args: str, env: Mapping[str, str], timeout: float = 300) -> str:
    """Run one `llfc` command that must succeed and return its standard output."""
    done = llfc(*args, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"llfc {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def create_key(owner: str, env: Mapping[str, str]) -> str:
    """A new API key for ``owner`` (the last line `llfc keys create` prints)."""
    return run_llfc("keys", "create", "--owner", owner, env=env).strip().splitlines()[-1]


@dataclass
class Process:
    """A long-running `llfc` command in its own process group, its output in a log file."""

    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGINT, timeout: float = 60) -> int:
        """Signal the process and wait for it; kills its whole group if it does not stop."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired as error:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
                message = f"{self.log_path.name} did not stop:\n{self.log()[-3000:]}"
                raise AssertionError(message) from error
        return int(self.popen.returncode)


def start(args: list[str], env: Mapping[str, str], log_path: Path) -> Process:
    """Start `llfc ARGS` and return at once; its output is appended to ``log_path``."""
    log = log_path.open("ab")
    popen = subprocess.Popen(
        [sys.executable, "-m", "llfc_cli", *args],
        cwd=REPOSITORY_ROOT,
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return Process(popen, log_path)


def wait_ready(
    base_url: str, process: Process, timeout: float = 120, path: str = "/readyz"
) -> None:
    """Poll ``path`` until it answers 200; fail with the log if the process dies first."""
    try:
        wait_until_ready(base_url, process.popen, timeout, path)
    except RuntimeError as error:
        raise AssertionError(f"{error}\n{process.log()[-5000:]}") from None


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@dataclass
class Served:
    """A running `llfc serve`: where it listens, its environment, its owners' keys, its process."""

    base_url: str
    env: dict[str, str]
    keys: dict[str, str]
    process: Process


@contextmanager
def serve(
    data_dir: Path, owners: Iterable[str], log_path: Path, **settings: str
) -> Iterator[Served]:
    """`llfc serve` on a free port over ``data_dir``, migrated first, with a key for each owner.

    Yields once the service is ready. On the way out it is stopped with SIGINT, as Ctrl-C would
    stop it, and fails the caller unless it then exits with 0: a clean stop is part of what the
    end-to-end tests check.
    """
    env = service_env(data_dir, **settings)
    migrated = llfc("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    keys = {owner: create_key(owner, env) for owner in owners}
    port = free_port()
    process = start(["serve", "--port", str(port)], env, log_path)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, process)
        yield Served(base_url, env, keys, process)
    finally:
        code = process.stop(signal.SIGINT)
    assert code == 0, process.log()[-3000:]
