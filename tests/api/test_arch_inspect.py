"""POST /v1/archs/inspect over real HTTP: the derived spec, what stays in place, the proof."""

from __future__ import annotations

import httpx

RESNET18 = {
    "name": "torchvision",
    "model": "resnet18",
    "kwargs": {"num_classes": 10},
    "input_shape": [3, 32, 32],
}


def test_inspect_reports_groups_unpermuted_axes_feature_layers_and_the_proof(
    alice: httpx.Client,
) -> None:
    response = alice.post("/v1/archs/inspect", json={"arch": RESNET18})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["arch"]["model"] == "resnet18"
    assert report["num_params"] == 11_181_642
    assert report["num_classes"] == 10 and report["has_batch_norm"] is True
    groups = {group["name"]: group for group in report["permutations"]}
    assert len(groups) == 12
    stem = groups["P_conv1"]
    assert stem["size"] == 64
    assert {"tensor": "layer2.0.downsample.0.weight", "axis": 1} in [
        {"tensor": axis["tensor"], "axis": axis["axis"]} for axis in stem["axes"]
    ]
    assert report["unpermuted"] == [
        {"tensor": "fc.weight", "axis": 0, "reason": "the model's output (logits)"},
        {"tensor": "fc.bias", "axis": 0, "reason": "the model's output (logits)"},
    ]
    names = [layer["name"] for layer in report["feature_layers"]]
    assert names[:4] == ["relu", "layer1.0.relu", "layer1.0.add", "layer1.0.relu#2"]
    assert report["feature_layers"][-1] == {"name": "logits", "kind": "logits"}
    assert "fc" in report["condition_ii_layers"]
    proof = report["proof"]
    assert proof["passed"] is True and 0 <= proof["relative_change"] < proof["tolerance"]


def test_inspect_without_the_proof_and_bad_archs(
    alice: httpx.Client, anonymous: httpx.Client
) -> None:
    quick = alice.post(
        "/v1/archs/inspect", json={"arch": {"name": "mlp", "widths": [4, 8, 2]}, "prove": False}
    )
    assert quick.status_code == 200
    assert quick.json()["proof"]["skipped"].startswith("not asked for")
    assert [group["size"] for group in quick.json()["permutations"]] == [8]

    unknown = alice.post(
        "/v1/archs/inspect", json={"arch": {"name": "torchvision", "model": "resnet81"}}
    )
    assert unknown.status_code == 422
    assert "Close matches: resnet18" in unknown.json()["detail"]

    assert anonymous.post("/v1/archs/inspect", json={"arch": RESNET18}).status_code == 401


def test_an_arch_larger_than_the_proof_cap_is_reported_without_a_proof() -> None:
    from service.archs import inspect_arch
    from service.core.config import Settings

    settings = Settings(inspect_proof_max_bytes=1024)
    report = inspect_arch({"name": "torchvision", "model": "resnet18"}, True, settings)
    assert "more than this service spends on request" in report["proof"]["skipped"]
    assert report["proof"].get("passed") is None


def test_the_body_may_be_the_arch_object_itself(alice: httpx.Client) -> None:
    bare = alice.post("/v1/archs/inspect", json={"name": "mlp", "widths": [4, 8, 8, 2]})
    assert bare.status_code == 200, bare.text
    assert bare.json()["proof"]["passed"] is True
    assert len(bare.json()["permutations"]) == 2
    mixed = alice.post(
        "/v1/archs/inspect", json={"arch": {"name": "mlp", "widths": [4, 2]}, "widths": [1]}
    )
    assert mixed.status_code == 422
    assert "only 'arch' and 'prove'" in mixed.json()["detail"]
