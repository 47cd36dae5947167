"""The float32 arithmetic a computation runs under, whatever the device's defaults.

On Ampere and later GPUs PyTorch may round float32 inputs to TF32 (10-bit mantissa) inside
matrix multiplications and convolutions: ``torch.backends.cudnn.allow_tf32`` is on by default.
That moves LLFC distances in their 4th digit and can change the permutation activation matching
chooses, so the measurements run in full float32 (``"fp32"``). Training may opt in to TF32
(``"tf32"``), which is faster and whose rounding noise training absorbs.

The flags are process-wide; :func:`float32_precision` sets them for a block and puts the previous
values back, so one process (a worker child serving many jobs, a notebook) is left as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch

from llfc_core.errors import InvalidParameterError

Precision = Literal["fp32", "tf32"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "tf32")
DEFAULT_PRECISION: Precision = "fp32"
"""Every measurement's precision, and training's unless it asks for another."""


def _backends() -> dict[str, Any]:
    """torch's per-backend float32 precision switches by name; each holds ``"ieee"``,
    ``"tf32"`` or ``"none"`` (as its parent switch)."""
    # torch adds the per-operator switches to its backend modules at import; its stubs
    # do not declare them.
    cuda: Any = torch.backends.cuda
    cudnn: Any = torch.backends.cudnn
    mkldnn: Any = torch.backends.mkldnn
    return {
        "cuda.matmul": cuda.matmul,
        "cudnn.conv": cudnn.conv,
        "cudnn.rnn": cudnn.rnn,
        "mkldnn.matmul": mkldnn.matmul,
        "mkldnn.conv": mkldnn.conv,
        "mkldnn.rnn": mkldnn.rnn,
    }


def _switch_value(backend: str, precision: Precision) -> str:
    # TF32 is a GPU format: the CPU's oneDNN kernels stay in IEEE float32 either way.
    return "tf32" if precision == "tf32" and not backend.startswith("mkldnn") else "ieee"


def check_precision(value: object) -> Precision:
    """``value`` if it names a precision, else InvalidParameterError saying which do."""
    if value == "fp32":
        return "fp32"
    if value == "tf32":
        return "tf32"
    raise InvalidParameterError(
        f"The parameter 'precision' must be {' or '.join(map(repr, PRECISIONS))}, got {value!r}."
    )


@contextmanager
def float32_precision(precision: Precision = DEFAULT_PRECISION) -> Iterator[Precision]:
    """Run the block with float32 matmuls and convolutions in ``precision``; restore after.

    ``"fp32"``: IEEE float32 in cuBLAS, cuDNN and oneDNN; ``"tf32"``: TF32 allowed in cuBLAS
    and cuDNN. The previous switches come back on exit, also when the block raises.

    This sets torch's per-backend ``fp32_precision`` switches, not the legacy
    ``allow_tf32`` / ``set_float32_matmul_precision`` ones: torch refuses to read the legacy
    flags once the two APIs were mixed, and the per-backend switch is what its kernels obey.
    """
    precision = check_precision(precision)
    switches = _backends()
    previous = {name: switch.fp32_precision for name, switch in switches.items()}
    try:
        for name, switch in switches.items():
            switch.fp32_precision = _switch_value(name, precision)
        yield precision
    finally:
        for name, switch in switches.items():
            switch.fp32_precision = previous[name]
