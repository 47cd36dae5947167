"""Shared by the load tests: the size of the load and what the running stack holds."""

from __future__ import annotations

from dataclasses import dataclass

from support.servers import Process

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
