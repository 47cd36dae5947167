"""Flattening an analyze result to per-layer rows, and JSON safety."""

from __future__ import annotations

import math

from service.results import MetricRow, json_safe, layer_metric_rows

PAIR = {
    "lmc": {
        "alphas": [0.0, 0.5, 1.0],
        "loss": [0.1, 0.9, 0.2],
        "error": [0.05, 0.4, 0.06],
        "loss_barrier": 0.75,
        "error_barrier": 0.345,
    },
    "llfc": {
        "layers": ["1", "3", "logits"],
        "cos_ab": [0.3, 0.4, 0.1],
        "cos_alpha": {"0.5": [0.01, 0.02, 0.03]},
        "scale_c": {"0.5": [0.9, None, 1.1]},
    },
    "weak_additivity": {"0.5": [0.001, 0.002]},
    "weak_additivity_layers": ["1", "3"],
    "commutativity": [0.2, 0.3, 0.4],
    "commutativity_layers": ["0", "2", "4"],
}


def test_every_number_of_a_pair_becomes_one_row() -> None:
    rows = layer_metric_rows({"pairs": {"naive": PAIR}})
    by_key = {(r.metric, r.layer, r.alpha): r.value for r in rows}
    assert by_key[("lmc_loss", None, 0.5)] == 0.9
    assert by_key[("lmc_error", None, 1.0)] == 0.06
    assert by_key[("loss_barrier", None, None)] == 0.75
    assert by_key[("cos_ab", "3", None)] == 0.4
    assert by_key[("cos_alpha", "logits", 0.5)] == 0.03
    assert by_key[("scale_c", "3", 0.5)] is None
    assert by_key[("weak_additivity", "3", 0.5)] == 0.002
    assert by_key[("commutativity", "4", None)] == 0.4
    # 3 alphas x 2 lmc metrics + 2 barriers + 3 cos_ab + 3 cos_alpha + 3 scale_c + 2 weak + 3 comm
    assert len(rows) == 6 + 2 + 3 + 3 + 3 + 2 + 3
    assert {r.pair for r in rows} == {"naive"}


def test_layer_index_follows_the_layer_order() -> None:
    rows = layer_metric_rows({"pairs": {"matched": PAIR}})
    cos_ab = [r for r in rows if r.metric == "cos_ab"]
    assert cos_ab == [
        MetricRow("matched", "cos_ab", "1", 0, None, 0.3),
        MetricRow("matched", "cos_ab", "3", 1, None, 0.4),
        MetricRow("matched", "cos_ab", "logits", 2, None, 0.1),
    ]


def test_json_safe_replaces_non_finite_numbers_with_null() -> None:
    value = {"a": [1.0, math.nan, {"b": math.inf}], "c": (2, -math.inf), "d": "text"}
    assert json_safe(value) == {"a": [1.0, None, {"b": None}], "c": [2, None], "d": "text"}
