"""Each pool child of a worker with several GPUs computes on its own, and the worker's main
process never loads torch (a CUDA context made there before the fork poisons every child)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support.pool_children import start_pool_child

from service.core.config import Settings
from worker.gpus import gpu_of_child


def test_children_take_the_workers_gpus_in_turn_by_their_pool_index() -> None:
    gpus = ["0", "1", "2", "3"]
    assert [gpu_of_child(index, gpus) for index in range(6)] == ["0", "1", "2", "3", "0", "1"]
    assert gpu_of_child(3, ["GPU-1f2e", "GPU-77aa"]) == "GPU-77aa"


def test_a_worker_with_one_gpu_or_none_named_leaves_its_children_as_they_are() -> None:
    assert gpu_of_child(2, ["5"]) is None
    assert gpu_of_child(0, []) is None


def test_the_gpus_come_from_the_setting_else_from_the_workers_own_visible_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6")
    assert Settings().worker_gpu_ids == ["4", "6"]
    assert Settings(worker_gpus="1,2,3").worker_gpu_ids == ["1", "2", "3"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert Settings().worker_gpu_ids == []


def test_the_child_start_hook_sets_the_childs_cuda_visible_devices_from_its_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start_pool_child(monkeypatch, "3,5", 1)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"


def test_importing_the_workers_main_process_modules_loads_no_torch() -> None:
    probe = (
        "import sys, worker.tasks, worker.leases, worker.gpus, service.broker\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('llfc_core')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    # The settings validate queue routes against the engine's method names, from its two
    # torch-free modules; nothing else of the engine may load here.
    assert done.stdout.strip() == "['llfc_core', 'llfc_core.errors', 'llfc_core.params']"
