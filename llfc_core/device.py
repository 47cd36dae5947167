"""Where the engine computes: a setting (auto, cuda or cpu) resolved to a torch device, and how
the device fails: out of memory, or in a way only a new process recovers from."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from llfc_core.errors import InvalidParameterError

DEVICE_SETTINGS = ("auto", "cuda", "cpu")


def resolve_device(setting: str = "auto") -> torch.device:
    """The device for ``setting``: ``auto`` picks CUDA when this machine has it, CPU otherwise.

    Asking for ``cuda`` on a machine without it is refused rather than silently falling back,
    so a deployment that expects a GPU learns at once that it has none.
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameterError(
                "The device 'cuda' was requested but this machine has no usable CUDA GPU; "
                "use 'auto' or 'cpu'."
            )
        return torch.device("cuda")
    if setting == "cpu":
        return torch.device("cpu")
    raise InvalidParameterError(
        f"Unknown device {setting!r}; the device must be one of {', '.join(DEVICE_SETTINGS)}."
    )


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the device ran out of memory: torch's ``OutOfMemoryError`` (a GPU),
    the CPU allocator's ``RuntimeError``, or Python's ``MemoryError``."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and "DefaultCPUAllocator: can't allocate" in str(error)


def is_device_failure(error: BaseException) -> bool:
    """Whether ``error`` is an error of the GPU itself (a device-side assertion, an illegal
    memory access), after which CUDA refuses every later call in the process: only a new
    process can use the GPU again."""
    if isinstance(error, torch.AcceleratorError):
        return not is_out_of_memory(error)
    message = str(error)
    return isinstance(error, RuntimeError) and (
        "device-side assert" in message or "CUDA error" in message
    )


def release_cached_memory() -> None:
    """Hand the GPU memory torch's caching allocator keeps back to the device, so the next job
    (or another process) can use it; nothing where this process never initialised CUDA."""
    cuda: Any = torch.cuda  # its is_initialized() is untyped
    if cuda.is_initialized():
        cuda.empty_cache()


@contextmanager
def deterministic_convolutions() -> Iterator[None]:
    """Run the block with cuDNN's deterministic convolution algorithms and without its autotuner
    (which may pick another algorithm from one run to the next); restore the flags after.

    A train job then gives the same bits when run twice on the same GPU, as it does on the CPU.
    ``torch.use_deterministic_algorithms(True)`` is not set: it refuses the backward pass of
    ``AdaptiveAvgPool2d`` on CUDA, which the VGG and ResNet archs hold, and needs
    ``CUBLAS_WORKSPACE_CONFIG`` in the environment before cuBLAS starts.
    """
    cudnn: Any = torch.backends.cudnn  # its flags are untyped module attributes
    previous = (cudnn.deterministic, cudnn.benchmark)
    try:
        cudnn.deterministic, cudnn.benchmark = True, False
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = previous
