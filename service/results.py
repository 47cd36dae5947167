"""Job results as stored: JSON made safe for every database, an analysis as metric rows, a
sweep's pairs as sweep_pairs rows.

The analyze result (docs/API.md) nests per-layer lists under alphas; :func:`layer_metric_rows`
stores its rows (:meth:`llfc_results.AnalysisResult.rows`, the iterator the client's CSV and
tables use too) so a client can ask for "cos_alpha of layer 2 at alpha 0.5" directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from llfc_results import AnalysisResult, MetricRow
from llfc_results.sweep import pair_metrics


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


def layer_metric_rows(result: Mapping[str, Any]) -> list[MetricRow]:
    """The rows ``GET /v1/jobs/{id}/metrics`` serves: every per-alpha and per-layer number of
    the result's pairs (the endpoints and the Lemma stay in the result itself), non-finite
    numbers as None."""
    return list(AnalysisResult.from_json(result).rows(with_summary=False))


def sweep_pair_row(
    model_ids: Sequence[str], index_a: int, index_b: int, analysis: Mapping[str, Any]
) -> dict[str, Any]:
    """The sweep_pairs row of one pair: its models, its matrix numbers and its whole analysis
    (already :func:`json_safe`)."""
    row: dict[str, Any] = {
        "index_a": index_a,
        "index_b": index_b,
        "model_a_id": model_ids[index_a],
        "model_b_id": model_ids[index_b],
        "analysis": analysis,
    }
    for kind, pair in AnalysisResult.from_json(analysis).pairs.items():
        for metric, value in pair_metrics(pair).items():
            row[f"{kind}_{metric}"] = value
    return row
