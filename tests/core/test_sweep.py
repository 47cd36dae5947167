"""Sweeps: every unordered pair analysed once, each entry that pair's own analysis, the work
about single models done once per model, and a zero diagonal that analysis confirms."""

from __future__ import annotations

import pytest
import torch

import llfc_core.analysis
import llfc_core.repair
from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.analysis.sweep import analyze_sweep
from llfc_core.archs import parse_arch
from llfc_core.data import digits
from llfc_core.errors import InvalidParameterError
from llfc_core.footprint import analysis_memory, sweep_memory
from llfc_core.progress import Reporter
from llfc_core.training import TrainConfig, train_modes
from llfc_results import SWEEP_METRICS, SweepPair
from llfc_results.sweep import pair_metrics

CPU = torch.device("cpu")
MLP = {"name": "mlp", "widths": [64, 32, 10]}
RESNET = {"name": "resnet", "depth": 8, "width": 0.5, "in_channels": 1, "input_size": 8}


@pytest.fixture(scope="module")
def digit_mlps() -> tuple:
    """Three MLPs trained on digits (a second each)."""
    arch = parse_arch(MLP)
    states = train_modes(arch, digits("train"), TrainConfig(epochs=3, seed=0), num_modes=3)
    return arch, states


def test_a_sweep_analyses_each_pair_once_and_each_entry_is_that_pairs_analysis(
    digit_mlps, monkeypatch
) -> None:
    arch, states = digit_mlps
    data = digits("test").limit(200)
    config = AnalysisConfig(match="weight")
    measured = []
    measure_pair = llfc_core.analysis.measure_pair

    def counting_measure_pair(*args, **kwargs):
        measured.append(args[1:3])
        return measure_pair(*args, **kwargs)

    monkeypatch.setattr(llfc_core.analysis, "measure_pair", counting_measure_pair)
    seen: list[SweepPair] = []
    stages: list[str] = []
    result, pairs = analyze_sweep(
        arch,
        states,
        data,
        config,
        device=CPU,
        on_pair=seen.append,
        reporter=Reporter(callback=lambda fraction, stage: stages.append(stage)),
    )
    assert [(pair.index_a, pair.index_b) for pair in seen] == [(0, 1), (0, 2), (1, 2)]
    assert seen == pairs
    # Naive and matched per pair, and nothing else: 3 pairs, 6 passes.
    assert len(measured) == 6
    assert any(stage.startswith("pair 3 of 3: model_1 vs model_2: ") for stage in stages)
    assert result.models == ["model_0", "model_1", "model_2"]
    monkeypatch.undo()
    for pair in pairs:
        alone = analyze_pair(
            arch, states[pair.index_a], states[pair.index_b], data, config, device=CPU
        )
        assert pair.analysis.to_json() == alone.to_json()
        for kind in ("naive", "matched"):
            for metric, value in pair_metrics(alone.pairs[kind]).items():
                assert value is not None
                assert result.matrices[kind][metric][pair.index_a][pair.index_b] == value
                assert result.matrices[kind][metric][pair.index_b][pair.index_a] == value
    for kind in ("naive", "matched"):
        for metric in SWEEP_METRICS:
            assert [result.matrices[kind][metric][i][i] for i in range(3)] == [0.0, 0.0, 0.0]
    # Matching moves B towards A: the matched barriers are lower, off the diagonal.
    naive, matched = result.matrices["naive"], result.matrices["matched"]
    assert matched["loss_barrier"][0][1] < naive["loss_barrier"][0][1]


def test_the_zero_diagonal_is_what_analysing_a_model_with_itself_gives(digit_mlps) -> None:
    arch, states = digit_mlps
    alone = analyze_pair(arch, states[0], states[0], digits("test").limit(200), device=CPU)
    assert pair_metrics(alone.pairs["naive"]) == {metric: 0.0 for metric in SWEEP_METRICS}


def test_a_sweep_builds_and_evaluates_each_batch_norm_model_once(monkeypatch) -> None:
    arch = parse_arch(RESNET)
    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        states.append(arch.build().state_dict())
    evaluated = []
    evaluate = llfc_core.analysis.evaluate

    def counting_evaluate(*args, **kwargs):
        evaluated.append(args[1])
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(llfc_core.analysis, "evaluate", counting_evaluate)
    reset = llfc_core.repair.reset_batch_norm
    resets = []

    def counting_reset(model, *args, **kwargs):
        resets.append(model)
        return reset(model, *args, **kwargs)

    # Endpoints are re-estimated by settle_endpoint, each theta_alpha by the path's repair:
    # both in llfc_core.repair.
    monkeypatch.setattr(llfc_core.repair, "reset_batch_norm", counting_reset)
    config = AnalysisConfig(alphas=(0.0, 0.5, 1.0), llfc_alphas=(0.5,))
    analyze_sweep(arch, states, digits("test").limit(64), config, device=CPU)
    # As uploaded: each model once, not once per pair it is in (which would be 6).
    assert len(evaluated) == 3
    # Each endpoint once (3), and each pair's midpoint (3).
    assert len(resets) == 6


def test_a_sweep_needs_two_models_and_llfc_at_one_half(digit_mlps) -> None:
    arch, states = digit_mlps
    data = digits("test").limit(10)
    with pytest.raises(InvalidParameterError, match="at least 2 models"):
        analyze_sweep(arch, states[:1], data, device=CPU)
    with pytest.raises(InvalidParameterError, match=r"'llfc_alphas' must hold 0\.5"):
        analyze_sweep(arch, states, data, AnalysisConfig(llfc_alphas=(0.25,)), device=CPU)


def test_a_sweeps_memory_estimate_adds_every_kept_model_to_one_pairs() -> None:
    arch = parse_arch(MLP)
    alphas = [0.0, 0.5, 1.0]
    pair = analysis_memory(arch, 64, "weight", alphas)
    # Each model's state dict as loaded and its built endpoint: two float32 copies.
    for num_models in (2, 16):
        estimate = sweep_memory(arch, 64, "weight", alphas, num_models)
        assert estimate.models == pair.models + 2 * num_models * 4 * arch.num_params()
        assert (estimate.batch, estimate.matching) == (pair.batch, pair.matching)
