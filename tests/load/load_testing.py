"""Shared by the load tests: the size of the load and what the running stack holds.

Test modules import from here, not from ``conftest`` (with several test folders on one command
line, pytest keeps only one module named ``conftest`` importable).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

# The HTTP, model and job helpers of the service tests (tests/ holds no packages).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from servers import Process

NUM_CLIENTS = 20
NUM_WORKERS = 2


@dataclass
class LoadStack:
    """The running API's URL, its database's URL, one API key per client (each of its own owner),
    the processes."""

    base_url: str
    database_url: str
    keys: list[str]
    api: Process
    workers: list[Process]
