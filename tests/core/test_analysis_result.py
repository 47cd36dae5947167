"""The engine's typed analyze result: ``to_json()`` is the wire JSON of docs/API.md exactly as the
engine wrote it before the result was typed, and one iterator gives every row of it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llfc_core.analysis import AnalysisConfig, AnalysisResult, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.data import digits

CPU = torch.device("cpu")
# Written by analyze_pair when it still built the result as a dict literal (issue 11), from the
# same seeds, data and config as below.
BEFORE_TYPING = Path(__file__).parent / "data" / "analyze_result_mlp_weight.json"


def _seeded_state(arch_spec: dict[str, object], seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return dict(parse_arch(arch_spec).build().state_dict())


def _assert_same_json(actual: object, expected: object, where: str = "result") -> None:
    """Same keys in the same order, same types, numbers equal to 1e-6 relative: the metrics are
    float32 sums, whose last bits depend on the CPU and its kernels (another machine of CI's kind
    moved a cosine distance by 3e-9 with the same code); a wrong formula moves them by far more."""
    assert type(actual) is type(expected), where
    if isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert list(actual) == list(expected), where
        for key in expected:
            _assert_same_json(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for index, (item, expected_item) in enumerate(zip(actual, expected, strict=True)):
            _assert_same_json(item, expected_item, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert abs(actual - expected) <= 1e-6 * max(1.0, abs(expected)), where  # type: ignore[operator]
    else:
        assert actual == expected, where


def test_the_typed_result_sends_the_json_the_engine_sent_before() -> None:
    spec = {"name": "mlp", "widths": [64, 32, 16, 10]}
    arch = parse_arch(spec)
    result = analyze_pair(
        arch,
        _seeded_state(spec, 1),
        _seeded_state(spec, 2),
        digits("test").limit(200),
        AnalysisConfig(match="weight", alphas=[0, 0.5, 1], llfc_alphas=[0.5]),
        device=CPU,
    )
    assert isinstance(result, AnalysisResult)
    wire = json.loads(json.dumps(result.to_json()))

    _assert_same_json(wire, json.loads(BEFORE_TYPING.read_text()))
    assert AnalysisResult.from_json(wire).to_json() == wire


def test_the_rows_hold_every_number_once_and_the_metrics_rows_leave_out_the_summary() -> None:
    wire = json.loads(BEFORE_TYPING.read_text())
    result = AnalysisResult.from_json(wire)
    rows = list(result.rows())
    naive = wire["pairs"]["naive"]

    by_key = {(row.pair, row.metric, row.layer, row.alpha): row.value for row in rows}
    assert len(by_key) == len(rows)
    assert by_key["endpoints", "error", "a", None] == wire["endpoints"]["a"]["error"]
    assert by_key["endpoints", "batch_norm_reestimated", "b", None] is False
    assert by_key["naive", "lmc_loss", None, 0.5] == naive["lmc"]["loss"][1]
    assert (
        by_key["matched", "cos_alpha", "3", 0.5]
        == wire["pairs"]["matched"]["llfc"]["cos_alpha"]["0.5"][1]
    )
    assert by_key["naive", "commutativity", "4", None] == naive["commutativity"][2]
    assert by_key["naive", "holds", None, None] is naive["lemma"]["holds"]
    # 2 endpoints x 5; per pair 3 alphas x 2 + 2 barriers + 3 cos_ab + 3 cos_alpha + 3 scale_c
    # + 2 weak additivity + 3 commutativity + 3 lemma.
    assert len(rows) == 10 + 2 * (6 + 2 + 3 + 3 + 3 + 2 + 3 + 3)

    served = list(result.rows(with_summary=False))
    assert served == [
        row
        for row in rows
        if row.pair != "endpoints" and row.metric not in {"epsilon", "max_error_on_path", "holds"}
    ]


def test_a_matched_pair_is_labelled_by_its_method_and_orthogonal_maps() -> None:
    stored = json.loads(BEFORE_TYPING.read_text())
    assert AnalysisResult.from_json(stored).pair_label("matched") == "weight-matched"
    stored["settings"]["symmetry"] = "orthogonal"
    result = AnalysisResult.from_json(stored)
    assert result.pair_label("matched") == "weight-matched+orthogonal"
    assert result.pair_label("naive") == "naive"
