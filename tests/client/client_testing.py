"""Helpers shared by the client and CLI tests: a real ``llfc serve`` process and small models."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from safetensors.torch import save_file

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 120.0
RETRY_AFTER_S = 1
MLP_ARCH = {"name": "mlp", "widths": [64, 32, 10]}
MLP_NUM_PARAMS = 64 * 32 + 32 + 32 * 10 + 10


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def service_environment(data_dir: Path) -> dict[str, str]:
    """This process's environment without LLFC_* settings, plus the embedded test settings:
    auth on, CPU, a one-second Retry-After."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LLFC_")}
    env.update(
        LLFC_DATA_DIR=str(data_dir),
        LLFC_AUTH="true",
        LLFC_DEVICE="cpu",
        LLFC_RETRY_AFTER_SECONDS=str(RETRY_AFTER_S),
        LLFC_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_llfc(
    *args: str, env: dict[str, str], timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """One ``llfc`` command in a child process, as a user's shell would run it."""
    return subprocess.run(
        [sys.executable, "-m", "llfc_cli", *args],
        cwd=REPOSITORY_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class RunningService:
    """``llfc serve`` in its own process group, its output in ``log_path``."""

    url: str
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"llfc serve exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"llfc serve was not ready in {READY_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; the whole group is killed only if it hangs."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"llfc serve did not stop:\n{self.log_tail()}") from None


def start_service(data_dir: Path) -> RunningService:
    """Migrate, create an API key, and start ``llfc serve`` on a free port."""
    env = service_environment(data_dir)
    migrated = run_llfc("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    created = run_llfc("keys", "create", "--owner", "client-tests", env=env)
    assert created.returncode == 0, created.stderr
    api_key = created.stdout.strip().splitlines()[-1]
    port = free_port()
    log_path = data_dir / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llfc_cli", "serve", "--port", str(port)],
            cwd=REPOSITORY_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return RunningService(f"http://127.0.0.1:{port}", api_key, process, log_path)


def write_mlp_checkpoint(path: Path, seed: int, widths: tuple[int, ...] = (64, 32, 10)) -> Path:
    """An ordinary ``nn.Sequential`` MLP's state dict saved as safetensors."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        if index:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(fan_in, fan_out))
    save_file(torch.nn.Sequential(*layers).state_dict(), str(path))
    return path
