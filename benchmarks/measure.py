"""What every benchmark measures the same way: peak memory, FLOPs, the machine's matmul peak.

Peak memory is the resident set of a fresh process (``VmHWM`` in ``/proc/self/status``): Python
tracers do not see PyTorch's allocations, the kernel does. A worker resets the counter
(``/proc/self/clear_refs``) once its imports, inputs and a warm-up are done, so the peak it
reports above that idle level is the memory the measured call itself needed. On a GPU, the
peak of PyTorch's allocator on that device is reported as well, and timings wait for the
device to finish.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

ENGINE_WORKLOADS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "mlp": {"arch": {"name": "mlp", "widths": [784, 512, 512, 512, 10]}, "examples": 10_000},
        "vgg": {"arch": {"name": "vgg", "depth": 16}, "examples": 1_000},
        "resnet": {"arch": {"name": "resnet", "depth": 20, "width": 4}, "examples": 500},
    },
    "tiny": {
        "mlp": {"arch": {"name": "mlp", "widths": [784, 64, 64, 64, 10]}, "examples": 300},
        "vgg": {"arch": {"name": "vgg", "depth": 11, "width": 0.0625}, "examples": 40},
        "resnet": {"arch": {"name": "resnet", "depth": 8, "width": 1}, "examples": 40},
    },
}
"""The models the analysis and activation-matching benchmarks measure, and over how many
examples, per size (``full``: the performance issue's models; ``tiny``: the smoke tests')."""

MATMUL_SIZE = 2048
MATMUL_TRIALS = 10
CPU = torch.device("cpu")


def emit(record: dict[str, Any]) -> None:
    """Print one result as one JSON line."""
    print(json.dumps(record), flush=True)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def reset_peak_rss() -> int:
    """Make the peak-RSS counter forget everything before now; returns the current RSS in KiB.

    Memory that earlier work freed but the C allocator kept is handed back to the system first
    (``malloc_trim``), so the idle level is what the process really holds.
    """
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_kib("VmRSS:")


def peak_rss_kib() -> int:
    """The process's peak resident set since the last :func:`reset_peak_rss`, in KiB."""
    return _status_kib("VmHWM:")


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished the work queued on it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_call(call: Callable[[], Any], device: torch.device = CPU) -> dict[str, Any]:
    """Run ``call`` once after resetting the peak counters: seconds, peak and idle RSS in MiB,
    and on a GPU the peak of the device memory PyTorch allocated."""
    on_gpu = device.type == "cuda"
    if on_gpu:
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    idle_kib = reset_peak_rss()
    started = time.perf_counter()
    call()
    synchronize(device)
    seconds = time.perf_counter() - started
    peak_kib = peak_rss_kib()
    measured = {
        "seconds": seconds,
        "peak_rss_mib": peak_kib / 1024,
        "idle_rss_mib": idle_kib / 1024,
        "rss_growth_mib": (peak_kib - idle_kib) / 1024,
    }
    if on_gpu:
        measured["peak_device_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return measured


def count_flops(call: Callable[[], Any]) -> int:
    """Floating-point operations of every matmul and convolution ``call`` runs (2 per MAC)."""
    with FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())


def matmul_peak_flops(
    size: int = MATMUL_SIZE, trials: int = MATMUL_TRIALS, device: torch.device = CPU
) -> float:
    """The dense float32 matmul rate of ``device`` (FLOP/s): the best of a few square products.

    The best rather than the mean, because other processes share the cores; it is the rate the
    hardware and BLAS can reach with torch's current thread count (on a GPU, with PyTorch's
    default float32 precision, i.e. without TF32 unless enabled).
    """
    left = torch.randn(size, size, device=device)
    right = torch.randn(size, size, device=device)
    product = torch.empty(size, size, device=device)
    for _ in range(2):
        torch.mm(left, right, out=product)
    best = float("inf")
    for _ in range(trials):
        synchronize(device)
        started = time.perf_counter()
        torch.mm(left, right, out=product)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def run_worker(script: Path, arguments: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``script --worker ...`` in a fresh Python and return the JSON of its last line."""
    completed = subprocess.run(
        [sys.executable, str(script), "--worker", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{script.name} worker {arguments} failed:\n{completed.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result
