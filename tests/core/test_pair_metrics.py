"""How the analysis pass is organised never changes its numbers: per-alpha models or one work
model, whole batches or chunks of examples, give the same results."""

from __future__ import annotations

import pytest
import torch

from llfc_core.analysis import AnalysisConfig, AnalysisResult, analyze_pair, pair_metrics
from llfc_core.archs import parse_arch
from llfc_core.data import digits

CPU = torch.device("cpu")
MLP = {"name": "mlp", "widths": [64, 32, 24, 10]}
VGG = {"name": "vgg", "depth": 11, "width": 0.125, "in_channels": 1, "input_size": 8}


def _states(arch_json: dict) -> tuple[dict, dict]:
    arch = parse_arch(arch_json)
    torch.manual_seed(0)
    return arch.build().state_dict(), arch.build().state_dict()


def _numbers(result: AnalysisResult) -> list[float]:
    pair = result.to_json()["pairs"]["naive"]
    values = [*pair["lmc"]["loss"], *pair["lmc"]["error"], *pair["llfc"]["cos_ab"]]
    for table in ("cos_alpha", "scale_c"):
        for row in pair["llfc"][table].values():
            values += row
    for row in pair["weak_additivity"].values():
        values += row
    return values + pair["commutativity"] + pair["commutativity_factors"]["features"]


def test_kept_models_and_the_shared_work_model_give_the_same_numbers() -> None:
    # 3,122 weights; 56 features per example: kept per alpha below 56 examples per batch.
    arch = parse_arch(MLP)
    state_a, state_b = _states(MLP)
    data = digits("test").limit(200)
    kept = analyze_pair(arch, state_a, state_b, data, AnalysisConfig(batch_size=50), device=CPU)
    shared = analyze_pair(arch, state_a, state_b, data, AnalysisConfig(batch_size=100), device=CPU)
    assert _numbers(kept) == pytest.approx(_numbers(shared), rel=1e-6, abs=1e-9)


def test_chunks_of_examples_give_the_same_numbers_as_whole_batches(monkeypatch) -> None:
    arch = parse_arch(VGG)
    state_a, state_b = _states(VGG)
    data = digits("test").limit(100)
    whole = analyze_pair(arch, state_a, state_b, data, device=CPU)
    # 8x8 maps of 8 channels: 512 values per example, so chunks of 3 examples.
    monkeypatch.setattr(pair_metrics, "CHUNK_VALUES", 1536)
    chunked = analyze_pair(arch, state_a, state_b, data, device=CPU)
    assert _numbers(chunked) == pytest.approx(_numbers(whole), rel=1e-6, abs=1e-9)


def test_a_gpu_chunks_metrics_in_larger_pieces_than_the_cpu() -> None:
    assert pair_metrics.chunk_values(torch.device("cpu")) == pair_metrics.CHUNK_VALUES
    assert pair_metrics.chunk_values(torch.device("cuda", 0)) == pair_metrics.GPU_CHUNK_VALUES
    assert pair_metrics.GPU_CHUNK_VALUES >= 4 * pair_metrics.CHUNK_VALUES
    # A default batch of 256 64x32x32 maps: four chunks on the CPU, one on a GPU.
    maps = 256 * 64 * 32 * 32
    assert maps // pair_metrics.CHUNK_VALUES == 4 and maps <= pair_metrics.GPU_CHUNK_VALUES
