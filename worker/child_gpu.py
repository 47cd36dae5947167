"""What a worker's pool child logs about its GPU as it starts, after it was pinned to it.

Only pool children import this module (it loads torch and initialises CUDA): the Celery main
process forks them and must never touch CUDA.
"""

from __future__ import annotations

import logging

from llfc_core.device import gpu_report

logger = logging.getLogger(__name__)


def log_child_gpu(index: int) -> None:
    """Log pool child ``index``'s GPU, its driver and compute capability, and whether torch
    has kernels for it: a warning when it has none, as every job would then fail on it."""
    report = gpu_report()
    if report is None:
        logger.info(
            "Pool child %d sees no CUDA GPU; its jobs with device auto run on the CPU", index
        )
    elif report.has_kernels:
        logger.info("Pool child %d computes on %s", index, report.sentence())
    else:
        logger.warning("Pool child %d cannot compute on its GPU: %s", index, report.sentence())
