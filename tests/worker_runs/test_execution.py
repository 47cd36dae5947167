"""``run_job`` as a pool child runs it: each job in full float32 whatever the process's
defaults, the precision in its result, and the switches put back for the next job; a job that
runs out of memory or breaks the GPU ends with a sentence, and a broken GPU ends the child."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from support.worker import WorkerData

import worker.executors
from service.broker import make_celery
from service.core.config import Settings
from worker import execution
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


def _failing_interpolation(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> list[str]:
    """The engine's interpolation raises ``error`` inside the real executor; returns the list
    that each release of cached memory after a job appends to."""

    def failing(*_args: Any, **_kwargs: Any) -> Any:
        raise error

    released: list[str] = []
    monkeypatch.setattr(worker.executors, "interpolate_checkpoint", failing)
    monkeypatch.setattr(execution, "release_cached_memory", lambda: released.append("released"))
    return released


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate"),
    ],
    ids=["cuda", "cpu"],
)
def test_out_of_memory_fails_the_job_telling_the_user_to_lower_its_batch_size(
    worker_data: WorkerData, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    released = _failing_interpolation(monkeypatch, error)
    job_id = worker_data.submit("interpolate", batch_size=512)
    run_job(job_id)

    job = worker_data.job(job_id)
    assert job.status == "failed"
    assert job.error == (
        "The job ran out of memory on its device (GPU or host); submit it again with a lower "
        "'batch_size' (it was 512) or a smaller model."
    )
    assert released == ["released"]


def test_a_gpu_failure_fails_the_job_with_a_sentence_then_ends_the_child(
    worker_data: WorkerData, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_failure = torch.AcceleratorError("CUDA error: device-side assert triggered")
    released = _failing_interpolation(monkeypatch, assert_failure)
    job_id = worker_data.submit("interpolate")
    with pytest.raises(SystemExit, match="the GPU failed"):
        run_job(job_id)

    job = worker_data.job(job_id)
    assert (job.status, job.error) == ("failed", execution.DEVICE_FAILURE)
    assert released == ["released"]


def test_a_cuda_error_raised_as_a_plain_runtime_error_also_ends_the_child(
    worker_data: WorkerData, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_interpolation(monkeypatch, RuntimeError("CUDA error: an illegal memory access"))
    job_id = worker_data.submit("interpolate")
    with pytest.raises(SystemExit):
        run_job(job_id)
    assert worker_data.job(job_id).error == execution.DEVICE_FAILURE


def test_any_other_error_stays_an_internal_error_and_the_child_goes_on(
    worker_data: WorkerData, monkeypatch: pytest.MonkeyPatch
) -> None:
    released = _failing_interpolation(monkeypatch, RuntimeError("shape mismatch"))
    job_id = worker_data.submit("interpolate")
    run_job(job_id)
    assert worker_data.job(job_id).error == execution.INTERNAL_FAILURE
    assert released == ["released"]


def test_children_are_replaced_after_the_configured_number_of_jobs(tmp_path: Path) -> None:
    replaced = make_celery(Settings(data_dir=tmp_path, worker_max_jobs_per_child=25))
    never = make_celery(Settings(data_dir=tmp_path, worker_max_jobs_per_child=0))
    assert replaced.conf.worker_max_tasks_per_child == 25
    assert never.conf.worker_max_tasks_per_child is None
