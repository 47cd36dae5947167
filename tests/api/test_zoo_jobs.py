"""A lab's torchvision model end to end over HTTP: its own state_dict uploads unchanged, and
match and analyze jobs on it prove the permutation and carry the spec's summary.

MobileNetV3-small (6 MB, under the test service's upload cap) has what a plain ResNet lacks:
Hardswish, squeeze-and-excitation gates and depthwise convolutions."""

from __future__ import annotations

import httpx
import torch
import torchvision
from support.api import run_job, torch_file, upload_checkpoint
from support.vit import VIT_DIGITS

from llfc_core.archs import parse_arch

MOBILENET_DIGITS = {
    "name": "torchvision",
    "model": "mobilenet_v3_small",
    "kwargs": {"num_classes": 10},
    "input_shape": [3, 8, 8],
}


def _upload_mobilenet(http: httpx.Client, seed: int) -> str:
    torch.manual_seed(seed)
    state = torchvision.models.mobilenet_v3_small(num_classes=10).state_dict()
    response = upload_checkpoint(
        http, torch_file(state), MOBILENET_DIGITS, name=f"mobilenet-{seed}"
    )
    assert response.status_code == 201, response.text
    assert response.json()["arch"]["model"] == "mobilenet_v3_small"
    return str(response.json()["id"])


def test_torchvision_mobilenet_match_and_analyze_jobs_prove_their_permutation(
    alice: httpx.Client,
) -> None:
    model_a, model_b = _upload_mobilenet(alice, 1), _upload_mobilenet(alice, 2)
    match = run_job(
        alice,
        {"kind": "match", "model_a": model_a, "model_b": model_b, "dataset": "builtin:digits"},
    )
    result = match["result"]
    assert result["function_check"]["passed"] is True
    assert result["function_check"]["inputs"] == "data"
    assert result["symmetry"]["permutations"] == 27
    assert len(result["permutation"]["P_features.0.0"]) == 16
    assert result["weight_distance_after"] < result["weight_distance_before"]

    analysis = run_job(
        alice,
        {
            "kind": "analyze",
            "model_a": model_a,
            "model_b": model_b,
            "dataset": "builtin:digits",
            "params": {
                "match": "weight",
                "max_examples": 64,
                "alphas": [0, 0.5, 1],
                "llfc_alphas": [0.5],
                "layers": ["features.1.block.1.scale_activation", "classifier.1"],
            },
        },
    )["result"]
    assert analysis["pairs"]["matched"]["llfc"]["layers"] == [
        "features.1.block.1.scale_activation",
        "classifier.1",
        "logits",
    ]
    assert analysis["matching"]["function_check"]["passed"] is True


def test_an_unknown_feature_layer_is_refused_at_submission(alice: httpx.Client) -> None:
    model = _upload_mobilenet(alice, 3)
    response = alice.post(
        "/v1/jobs",
        json={
            "kind": "analyze",
            "model_a": model,
            "model_b": model,
            "dataset": "builtin:digits",
            "params": {"layers": ["layer9.relu"]},
        },
    )
    assert response.status_code == 422
    assert "not a feature layer" in response.json()["detail"]


def _upload_vit(http: httpx.Client, seed: int) -> str:
    torch.manual_seed(seed)
    state = parse_arch(VIT_DIGITS).build().state_dict()
    response = upload_checkpoint(http, torch_file(state), VIT_DIGITS, name=f"vit-{seed}")
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_vit_match_job_rotates_heads_orthogonally_and_keeps_bs_function(
    alice: httpx.Client,
) -> None:
    model_a, model_b = _upload_vit(alice, 1), _upload_vit(alice, 2)
    result = run_job(
        alice,
        {
            "kind": "match",
            "model_a": model_a,
            "model_b": model_b,
            "dataset": "builtin:digits",
            "params": {"symmetry": "orthogonal"},
        },
    )["result"]
    assert result["symmetry_group"] == "orthogonal"
    assert result["function_check"]["passed"] is True
    assert result["weight_distance_after"] < result["weight_distance_permuted"]
    assert result["weight_distance_permuted"] < result["weight_distance_before"]


def test_orthogonal_matching_of_an_arch_without_attention_is_refused_at_submission(
    alice: httpx.Client,
) -> None:
    model = _upload_mobilenet(alice, 4)
    for kind, params in (
        ("match", {"symmetry": "orthogonal"}),
        ("analyze", {"match": "weight", "symmetry": "orthogonal"}),
    ):
        response = alice.post(
            "/v1/jobs",
            json={
                "kind": kind,
                "model_a": model,
                "model_b": model,
                "dataset": "builtin:digits",
                "params": params,
            },
        )
        assert response.status_code == 422, kind
        assert "no attention heads" in response.json()["detail"]
