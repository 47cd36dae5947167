"""Job results as stored: JSON made safe for every database, and an analysis flattened to rows.

The analyze result (API.md) nests per-layer lists under alphas; :func:`layer_metric_rows` turns
it into one row per number so a client can ask for "cos_alpha of layer 2 at alpha 0.5" directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricRow:
    pair: str
    metric: str
    layer: str | None
    layer_index: int | None
    alpha: float | None
    value: float | None


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by null: JSON has no such numbers and
    PostgreSQL's JSON types refuse them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _per_layer(
    pair: str, metric: str, layers: Sequence[str], values: Any, alpha: float | None
) -> Iterator[MetricRow]:
    if not isinstance(values, list):
        return
    for index, (layer, value) in enumerate(zip(layers, values, strict=False)):
        yield MetricRow(pair, metric, layer, index, alpha, _number(value))


def _per_alpha_layer(
    pair: str, metric: str, layers: Sequence[str], by_alpha: Any
) -> Iterator[MetricRow]:
    if not isinstance(by_alpha, Mapping):
        return
    for alpha_text, values in by_alpha.items():
        yield from _per_layer(pair, metric, layers, values, float(alpha_text))


def layer_metric_rows(result: Mapping[str, Any]) -> list[MetricRow]:
    """Every number of an analyze result's pairs as (pair, metric, layer, alpha, value) rows.

    Metrics: ``lmc_loss``/``lmc_error`` per alpha and ``loss_barrier``/``error_barrier``
    (layer null); ``cos_ab`` per layer; ``cos_alpha``, ``scale_c`` and ``weak_additivity`` per
    layer and alpha; ``commutativity`` per weighted layer.
    """
    rows: list[MetricRow] = []
    pairs = result.get("pairs")
    if not isinstance(pairs, Mapping):
        return rows
    for pair_name, pair in pairs.items():
        if not isinstance(pair, Mapping):
            continue
        lmc = pair.get("lmc", {})
        for alpha, loss, error in zip(
            lmc.get("alphas", []), lmc.get("loss", []), lmc.get("error", []), strict=False
        ):
            rows.append(MetricRow(pair_name, "lmc_loss", None, None, float(alpha), _number(loss)))
            rows.append(MetricRow(pair_name, "lmc_error", None, None, float(alpha), _number(error)))
        for barrier in ("loss_barrier", "error_barrier"):
            if barrier in lmc:
                rows.append(MetricRow(pair_name, barrier, None, None, None, _number(lmc[barrier])))
        llfc = pair.get("llfc", {})
        layers = list(llfc.get("layers", []))
        rows += _per_layer(pair_name, "cos_ab", layers, llfc.get("cos_ab"), None)
        rows += _per_alpha_layer(pair_name, "cos_alpha", layers, llfc.get("cos_alpha"))
        rows += _per_alpha_layer(pair_name, "scale_c", layers, llfc.get("scale_c"))
        relu_layers = list(pair.get("weak_additivity_layers", layers[:-1]))
        rows += _per_alpha_layer(
            pair_name, "weak_additivity", relu_layers, pair.get("weak_additivity")
        )
        weighted = list(pair.get("commutativity_layers", []))
        rows += _per_layer(pair_name, "commutativity", weighted, pair.get("commutativity"), None)
    return rows
