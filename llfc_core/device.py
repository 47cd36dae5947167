"""Where the engine computes: a setting (auto, cuda or cpu) resolved to a torch device, and how
the device fails: out of memory, or in a way only a new process recovers from."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class GpuReport:
    """What a process's GPU is, and whether this torch can compute on it."""

    name: str
    capability: tuple[int, int]
    driver: str
    kernel_archs: list[str]
    """The architectures torch was built with kernels for (``torch.cuda.get_arch_list()``)."""

    @property
    def arch(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"

    @property
    def has_kernels(self) -> bool:
        return self.arch in self.kernel_archs

    def sentence(self) -> str:
        kernels = "yes" if self.has_kernels else f"NO (torch has {', '.join(self.kernel_archs)})"
        major, minor = self.capability
        return (
            f"{self.name}, driver {self.driver}, compute capability {major}.{minor}, "
            f"torch {torch.__version__} kernels for {self.arch}: {kernels}"
        )


def gpu_report() -> GpuReport | None:
    """This process's first CUDA GPU (initialising CUDA), or None when it sees none."""
    if not torch.cuda.is_available():
        return None
    return GpuReport(
        name=torch.cuda.get_device_name(0),
        capability=torch.cuda.get_device_capability(0),
        driver=cuda_driver_version(),
        kernel_archs=torch.cuda.get_arch_list(),
    )


def cuda_driver_version() -> str:
    """The newest CUDA version the installed driver supports (torch does not report its
    driver), or "unknown" where the driver library cannot be loaded."""
    version = ctypes.c_int()
    try:
        failed = ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version))
    except OSError:
        return "unknown"
    if failed:
        return "unknown"
    return f"for CUDA {version.value // 1000}.{version.value % 1000 // 10}"
