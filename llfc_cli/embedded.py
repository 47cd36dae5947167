"""A private embedded service (``llfc serve``) for commands that need one, like the demo."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes], timeout: float, path: str = "/readyz"
) -> None:
    """Poll ``path`` until it answers 200; fail early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"The service at {url} exited with code {process.returncode}.")
        try:
            if httpx.get(f"{url}{path}", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"The service at {url} was not ready after {timeout:.0f} s.")


@contextmanager
def embedded_service(data_dir: Path | None = None, log_path: Path | None = None) -> Iterator[str]:
    """Run ``llfc serve`` on a free port with its own data folder; yield its base URL.

    The data folder is temporary unless given. The server's output goes to ``log_path`` (or is
    discarded), so it does not mix with the caller's. It is stopped with SIGINT, as Ctrl-C would.
    """
    with tempfile.TemporaryDirectory(prefix="llfc-embedded-") as scratch:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "LLFC_DATA_DIR": str(data_dir or Path(scratch) / "data"),
            "LLFC_AUTH": "off",
        }
        env.pop("LLFC_DATABASE_URL", None)
        env.pop("LLFC_BROKER_URL", None)
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "llfc_cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_ready(url, process, READY_TIMEOUT_S)
            yield url
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if log_path:
                log.close()  # type: ignore[union-attr]
