"""Which GPU each pool child of a worker computes on.

A child sees every GPU of its worker unless told otherwise, and the engine's ``cuda`` device is
the first one it sees: with several children, all would share ``cuda:0``. So a child whose
worker has several GPUs is pinned, as it starts and before anything in it touches CUDA, to one
of them by its pool index (stable: a child that replaces a dead one takes its index). Child ``i``
sees GPU ``i mod n`` of the worker's ``n``, as its only ``cuda`` device.

Torch-free: the worker's main process imports this module and must never initialise CUDA.
"""

from __future__ import annotations

import logging
import os

from service.core.config import Settings

logger = logging.getLogger(__name__)


def gpu_of_child(index: int, gpu_ids: list[str]) -> str | None:
    """The GPU that pool child ``index`` computes on, or None to leave it as its worker (one GPU,
    or none named)."""
    if len(gpu_ids) < 2:
        return None
    return gpu_ids[index % len(gpu_ids)]


def pin_child_to_its_gpu(index: int, settings: Settings) -> str | None:
    """Make GPU ``gpu_of_child(index, ...)`` this process's only CUDA device; returns it.

    Must run before CUDA initialises in this process, which reads ``CUDA_VISIBLE_DEVICES`` once.
    """
    gpu = gpu_of_child(index, settings.worker_gpu_ids)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        logger.info("Pool child %d computes on GPU %s", index, gpu)
    return gpu
