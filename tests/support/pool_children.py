"""Starting a worker's pool child in the test process: its start hook, as billiard runs it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import worker.tasks


def start_pool_child(monkeypatch: pytest.MonkeyPatch, gpus: str, index: int) -> None:
    """Run the pool child start hook as child ``index`` of a worker given GPUs ``gpus``."""
    monkeypatch.setenv("LLFC_WORKER_GPUS", gpus)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus)
    monkeypatch.setattr(worker.tasks, "current_process", lambda: SimpleNamespace(index=index))
    worker.tasks.get_settings.cache_clear()
    try:
        worker.tasks.load_engine()
    finally:
        worker.tasks.get_settings.cache_clear()
