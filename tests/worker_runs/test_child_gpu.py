"""A pool child logs, once pinned, the GPU it computes on and whether torch can use it; CUDA is
faked, so these run without a GPU."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from support.pool_children import start_pool_child

import worker.child_gpu
from llfc_core.device import GpuReport, gpu_report


def _fake_h200(monkeypatch: pytest.MonkeyPatch, kernel_archs: list[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: kernel_archs)
    monkeypatch.setattr("llfc_core.device.cuda_driver_version", lambda: "for CUDA 12.8")


def test_a_child_logs_its_gpu_driver_capability_and_kernels(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _fake_h200(monkeypatch, ["sm_80", "sm_90"])
    with caplog.at_level(logging.INFO, logger="worker.child_gpu"):
        worker.child_gpu.log_child_gpu(2)
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        f"Pool child 2 computes on NVIDIA H200, driver for CUDA 12.8, compute capability 9.0, "
        f"torch {torch.__version__} kernels for sm_90: yes"
    )


def test_a_gpu_torch_has_no_kernels_for_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _fake_h200(monkeypatch, ["sm_75", "sm_80"])
    with caplog.at_level(logging.INFO, logger="worker.child_gpu"):
        worker.child_gpu.log_child_gpu(0)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "cannot compute on its GPU" in record.getMessage()
    assert "sm_90: NO (torch has sm_75, sm_80)" in record.getMessage()


def test_a_child_without_a_gpu_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_report() is None
    with caplog.at_level(logging.INFO, logger="worker.child_gpu"):
        worker.child_gpu.log_child_gpu(1)
    assert [record.getMessage() for record in caplog.records] == [
        "Pool child 1 sees no CUDA GPU; its jobs with device auto run on the CPU"
    ]


def test_the_child_start_hook_reports_the_gpu_after_pinning_the_child_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str | None] = []

    def report() -> GpuReport | None:
        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        return None

    monkeypatch.setattr(worker.child_gpu, "gpu_report", report)
    start_pool_child(monkeypatch, "3,5", 1)
    assert seen == ["5"]
