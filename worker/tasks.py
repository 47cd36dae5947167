"""One Celery task per job kind, each a thin call into the engine (see ``worker/execution.py``).

The engine, and with it torch, is imported inside the task, that is in the prefork child: the
Celery parent process never loads torch or touches CUDA.
"""

from __future__ import annotations

from celery.signals import worker_process_init

from worker.celery_app import TASK_NAMES, celery_app


@worker_process_init.connect
def load_engine(**_: object) -> None:
    """Import the engine as each pool child starts, so the first job does not wait for torch."""
    import worker.execution  # noqa: F401


@celery_app.task(name=TASK_NAMES["match"])
def match(job_id: str) -> None:
    """Permute model B onto model A; artifact ``model_b_permuted``."""
    from worker.execution import run_job, run_match

    run_job(job_id, run_match)


@celery_app.task(name=TASK_NAMES["interpolate"])
def interpolate(job_id: str) -> None:
    """alpha * A + (1 - alpha) * B; artifact ``interpolated``."""
    from worker.execution import run_interpolate, run_job

    run_job(job_id, run_interpolate)


@celery_app.task(name=TASK_NAMES["analyze"])
def analyze(job_id: str) -> None:
    """The whole LMC/LLFC analysis of a pair; result in the job row and per-layer rows."""
    from worker.execution import run_analyze, run_job

    run_job(job_id, run_analyze)


@celery_app.task(name=TASK_NAMES["train"])
def train(job_id: str) -> None:
    """Train modes to study; artifacts ``model_0``, ``model_1``, ..."""
    from worker.execution import run_job, run_train

    run_job(job_id, run_train)
