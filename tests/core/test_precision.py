"""Float32 precision is set per computation and the process's switches come back after it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llfc_core.archs import parse_arch
from llfc_core.data import digits
from llfc_core.errors import InvalidParameterError
from llfc_core.precision import float32_precision
from llfc_core.training import TrainConfig, train_mode

SWITCHES = {
    "cuda.matmul": torch.backends.cuda.matmul,
    "cudnn.conv": torch.backends.cudnn.conv,
    "cudnn.rnn": torch.backends.cudnn.rnn,
    "mkldnn.matmul": torch.backends.mkldnn.matmul,
    "mkldnn.conv": torch.backends.mkldnn.conv,
    "mkldnn.rnn": torch.backends.mkldnn.rnn,
}


def switches() -> dict[str, str]:
    return {name: switch.fp32_precision for name, switch in SWITCHES.items()}


@pytest.fixture()
def device_defaults_with_tf32() -> dict[str, str]:
    """A process whose switches allow TF32 where a GPU would use it (cuDNN's default)."""
    before = switches()
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    yield switches()
    for name, value in before.items():
        SWITCHES[name].fp32_precision = value


def test_fp32_turns_tf32_off_everywhere_and_restores_the_switches_after(
    device_defaults_with_tf32: dict[str, str],
) -> None:
    with float32_precision() as precision:
        assert precision == "fp32"
        assert set(switches().values()) == {"ieee"}
    assert switches() == device_defaults_with_tf32
    assert device_defaults_with_tf32["cudnn.conv"] == "tf32"


def test_the_switches_come_back_when_the_block_raises(
    device_defaults_with_tf32: dict[str, str],
) -> None:
    with pytest.raises(RuntimeError, match="the job failed"), float32_precision("fp32"):
        raise RuntimeError("the job failed")
    assert switches() == device_defaults_with_tf32


def test_tf32_allows_it_on_the_gpu_backends_only_and_nests_inside_fp32() -> None:
    before = switches()
    with float32_precision("fp32"):
        with float32_precision("tf32"):
            inside = switches()
        assert set(switches().values()) == {"ieee"}
    assert inside["cuda.matmul"] == inside["cudnn.conv"] == inside["cudnn.rnn"] == "tf32"
    assert inside["mkldnn.matmul"] == inside["mkldnn.conv"] == "ieee"
    assert switches() == before


def test_an_unknown_precision_is_refused_with_the_known_ones() -> None:
    refused = pytest.raises(InvalidParameterError, match="'fp32' or 'tf32', got 'bf16'")
    with refused, float32_precision("bf16"):  # type: ignore[arg-type]
        pass
    with pytest.raises(InvalidParameterError, match="'precision'"):
        TrainConfig(precision="fp16")  # type: ignore[arg-type]


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_training_steps_run_in_the_configured_precision_and_leave_the_callers(
    precision: str,
) -> None:
    seen: list[str] = []

    def record(_module: nn.Module, _inputs: object) -> None:
        seen.append(torch.backends.cudnn.conv.fp32_precision)

    arch = parse_arch({"name": "mlp", "widths": [64, 16, 10]})
    hook = nn.modules.module.register_module_forward_pre_hook(record)
    try:
        with float32_precision("fp32"):
            train_mode(
                arch,
                digits("train").limit(64),
                TrainConfig(epochs=1, batch_size=32, precision=precision),  # type: ignore[arg-type]
                device=torch.device("cpu"),
            )
            after = torch.backends.cudnn.conv.fp32_precision
    finally:
        hook.remove()
    assert seen and set(seen) == {"tf32" if precision == "tf32" else "ieee"}
    assert after == "ieee"
