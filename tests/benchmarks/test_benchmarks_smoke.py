"""Every benchmark still runs: each is run at ``--size tiny`` and its JSON lines are checked.

The full-size runs are far too long for the test suite; these keep the scripts from rotting and
check that what they report is consistent (ours and the baseline compute the same numbers,
measured times and memory are positive).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(name: str, *arguments: str) -> list[dict[str, Any]]:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--size", "tiny", *arguments],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_analysis_throughput_reports_every_model_and_agrees_with_the_baseline() -> None:
    records = _run("analysis_throughput")
    assert [record["model"] for record in records] == ["mlp", "vgg", "resnet"]
    for record in records:
        assert record["benchmark"] == "analysis_throughput"
        assert record["max_abs_difference"] < 1e-4, record
        for side in ("ours", "baseline"):
            assert record[side]["seconds"] > 0
            assert record[side]["gflop"] > 0
            assert record[side]["peak_rss_mib"] > record[side]["rss_growth_mib"] >= 0
        # The engine skips work the baseline repeats, so it executes fewer FLOPs.
        assert record["ours"]["gflop"] < record["baseline"]["gflop"]
        assert record["matmul_peak_gflop_per_s"] > 0
        _check_gpu_block(record["gpu"])


def _check_gpu_block(gpu: dict[str, Any] | None) -> None:
    """A GPU block when a GPU is present (the same checks, plus agreement with the CPU)."""
    import torch

    if not torch.cuda.is_available():
        assert gpu is None
        return
    assert gpu is not None
    assert gpu["max_abs_difference_from_cpu"] < 1e-3, gpu
    for side in ("ours", "baseline"):
        assert gpu[side]["seconds"] > 0
        assert gpu[side]["peak_device_memory_mib"] > 0


@pytest.mark.slow
def test_weight_matching_times_both_solvers_and_they_agree() -> None:
    records = _run("weight_matching")
    assert [record["model"] for record in records] == ["mlp", "mlp", "resnet", "resnet"]
    for record in records:
        runs = [record[name] for name in ("scipy", "lap") if name in record]
        for run in runs:
            assert run["sweeps"] >= 1
            assert run["solver_calls"] >= 1
            assert 0 < run["solver_seconds"] <= run["seconds"]
            assert 0 <= run["solver_share"] <= 1
        if "lap" in record:
            assert record["same_permutation"] is True


@pytest.mark.slow
def test_activation_matching_reports_its_ratio_to_a_plain_forward_pass() -> None:
    records = _run("activation_matching")
    assert [record["model"] for record in records] == ["mlp", "vgg", "resnet"]
    for record in records:
        assert record["matching_seconds"] > 0 and record["forward_a_and_b_seconds"] > 0
        assert record["ratio"] > 0
        # Matching never makes B further from A than the identity permutation leaves it.
        assert record["objective_after"] <= record["objective_before"]


@pytest.mark.slow
def test_matching_methods_reports_every_pair_and_method_and_commutativity_keeps_its_start() -> None:
    records = _run("matching_methods")
    methods = ["weight", "activation", "commutativity", "commutativity-from-identity"]
    assert [(record["pair"], record["method"]) for record in records] == [
        (pair, method) for pair in ("mlp", "resnet-bn", "vgg-no-bn") for method in methods
    ]
    for pair in ("mlp", "resnet-bn", "vgg-no-bn"):
        reached = {r["method"]: r["equation_two"] for r in records if r["pair"] == pair}
        # The descent starts at weight matching's solution and never increases Eq. (2).
        assert reached["commutativity"] <= reached["weight"] * (1 + 1e-6)
        assert all(r["matching_seconds"] > 0 for r in records)


@pytest.mark.slow
def test_memory_scaling_reports_each_size_and_a_summary() -> None:
    records = _run("memory_scaling")
    sizes, summary = records[:-1], records[-1]
    assert [record["examples"] for record in sizes] == summary["examples"] == [100, 300, 600]
    for record in sizes:
        assert record["peak_rss_mib"] > record["rss_growth_mib"] >= 0
    expected = sizes[-1]["peak_rss_mib"] / sizes[0]["peak_rss_mib"] - 1
    assert summary["peak_growth"] == pytest.approx(expected, abs=1e-3)


@pytest.mark.slow
def test_spec_derivation_reports_each_model_and_a_weight_matching() -> None:
    records = _run("spec_derivation", "--repeats", "1")
    derivations = [record for record in records if record["benchmark"] == "spec_derivation"]
    assert [record["model"] for record in derivations] == [
        "torchvision/resnet18",
        "timm/convnext_atto",
        "timm/vit_tiny_patch16_224",
    ]
    for record in derivations:
        assert record["derive_seconds"] > 0 and record["groups"] > 0
        assert record["proof_relative_change"] < 1e-4
    assert derivations[-1]["nested_permutations"] == 4
    matchings = [r for r in records if r["benchmark"] == "spec_derivation_weight_matching"]
    assert [r["model"] for r in matchings] == ["torchvision/resnet18", "timm/vit_tiny_patch16_224"]
    for matching in matchings:
        assert matching["sweeps"] >= 1 and 0 < matching["solver_share"] < 1
        assert matching["weight_distance_after"] < matching["weight_distance_before"]
    vit = matchings[-1]
    assert vit["weight_distance_orthogonal"] <= vit["weight_distance_after"]


@pytest.mark.slow
def test_merging_reports_every_case_and_starts_the_feature_average_at_the_weight_average() -> None:
    records = _run("merging")
    assert [record["case"] for record in records] == ["mlp-2", "mlp-3", "mlp-4", "vgg-no-bn"]
    for record in records:
        assert len(record["inputs"]) == record["models"]
        assert record["same_weight_average"] is True
        assert record["rounds"] >= 1 and record["fitted_layers"] >= 3
        # What the fit minimises, measured on held-out data: never worse than where it started.
        errors = record["feature_error"]
        assert errors["feature_average"] < errors["weight_average"]
        assert all(seconds > 0 for seconds in record["seconds"].values())
