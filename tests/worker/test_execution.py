"""``run_job`` as a pool child runs it: each job in full float32 whatever the process's
defaults, the precision in its result, and the switches put back for the next job."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from support.worker import WorkerData

import worker.executors
from worker.execution import run_job

GPU_SWITCHES = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)


@pytest.fixture()
def tf32_defaults() -> Any:
    """The process allows TF32 as cuDNN does by default on a GPU."""
    before = [switch.fp32_precision for switch in GPU_SWITCHES]
    for switch in GPU_SWITCHES:
        switch.fp32_precision = "tf32"
    yield
    for switch, value in zip(GPU_SWITCHES, before, strict=True):
        switch.fp32_precision = value


def test_pair_jobs_run_in_fp32_record_it_and_leave_the_childs_switches_as_they_were(
    worker_data: WorkerData, tf32_defaults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str]] = []
    engine_interpolate = worker.executors.interpolate_checkpoint

    def spying(*args: Any, **kwargs: Any) -> Any:
        seen.append(tuple(switch.fp32_precision for switch in GPU_SWITCHES))
        return engine_interpolate(*args, **kwargs)

    monkeypatch.setattr(worker.executors, "interpolate_checkpoint", spying)
    interpolate = worker_data.submit("interpolate", alpha=0.5)
    match = worker_data.submit("match")
    run_job(interpolate)
    run_job(match)

    assert seen == [("ieee", "ieee")]
    for job_id in (interpolate, match):
        job = worker_data.job(job_id)
        assert job.status == "succeeded", job.error
        assert job.result is not None and job.result["precision"] == "fp32"
    assert [switch.fp32_precision for switch in GPU_SWITCHES] == ["tf32", "tf32"]
