"""Shared by the security tests: the running server's description and problem-detail checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from support.servers import Process

MAX_UPLOAD_BYTES = 1024 * 1024
OWNERS = ("alice", "bob", "fuzz")
PROBLEM_JSON = "application/problem+json"


@dataclass
class GuardedService:
    """The running server, its data folder and settings, one API key per owner, its process."""

    base_url: str
    data_dir: Path
    env: dict[str, str]
    keys: dict[str, str]
    process: Process

    def is_serving(self) -> bool:
        """The process is alive and answers GET /healthz with 200."""
        if self.process.popen.poll() is not None:
            return False
        return httpx.get(f"{self.base_url}/healthz", timeout=10).status_code == 200


def assert_problem(response: httpx.Response, status: int, *phrases: str) -> dict[str, Any]:
    """A problem detail of ``status`` whose detail is a sentence holding ``phrases``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    detail = problem["detail"]
    assert re.match(r"^[A-Z'].*[.)]$", detail, re.DOTALL), f"not a sentence: {detail!r}"
    assert "Traceback" not in detail
    for phrase in phrases:
        assert phrase in detail, f"{phrase!r} not in {detail!r}"
    return problem
