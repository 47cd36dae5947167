import pytest
import torch
from torch import nn

from llfc_core.archs import parse_arch
from llfc_core.data import digits
from llfc_core.device import (
    deterministic_convolutions,
    is_device_failure,
    is_out_of_memory,
    release_cached_memory,
    resolve_device,
)
from llfc_core.errors import InvalidParameterError
from llfc_core.training import TrainConfig, train_mode


def test_auto_picks_cuda_exactly_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device().type == expected


def test_cpu_is_always_available() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_is_refused_with_a_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidParameterError, match="no usable CUDA GPU"):
        resolve_device("cuda")


def test_cuda_with_a_gpu_resolves_to_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda") == torch.device("cuda")


@pytest.mark.parametrize("setting", ["gpu", "", "CUDA", "tpu"])
def test_unknown_settings_are_refused(setting: str) -> None:
    with pytest.raises(InvalidParameterError, match="must be one of auto, cuda, cpu"):
        resolve_device(setting)


def test_cached_gpu_memory_is_released_only_where_cuda_was_initialised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    release_cached_memory()
    assert emptied == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    release_cached_memory()
    assert emptied == [True]


def test_out_of_memory_and_gpu_failures_are_told_apart_from_other_errors() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not is_device_failure(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_device_failure(torch.AcceleratorError("CUDA error: device-side assert triggered"))
    assert is_device_failure(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_device_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_convolutions_are_deterministic_inside_the_block_and_as_before_after() -> None:
    cudnn = torch.backends.cudnn
    before = (cudnn.deterministic, cudnn.benchmark)
    cudnn.deterministic, cudnn.benchmark = False, True
    try:
        with deterministic_convolutions():
            assert (cudnn.deterministic, cudnn.benchmark) == (True, False)
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
        with pytest.raises(ValueError), deterministic_convolutions():
            raise ValueError("a failing block")
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
    finally:
        cudnn.deterministic, cudnn.benchmark = before


def test_training_runs_with_deterministic_convolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bool, bool]] = []
    original = nn.Linear.forward

    def recording(self: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
        seen.append((torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark))
        return original(self, inputs)

    monkeypatch.setattr(nn.Linear, "forward", recording)
    arch = parse_arch({"name": "mlp", "widths": [64, 8, 10]})
    train_mode(arch, digits("train").limit(64), TrainConfig(epochs=1), torch.device("cpu"))
    assert seen and set(seen) == {(True, False)}
