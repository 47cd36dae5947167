import pytest
import torch

from llfc_core.device import resolve_device
from llfc_core.errors import InvalidParameterError


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
