"""Job results as stored: JSON made safe for every database, and an analysis as metric rows.

The analyze result (docs/API.md) nests per-layer lists under alphas; :func:`layer_metric_rows`
stores its rows (:meth:`llfc_results.AnalysisResult.rows`, the iterator the client's CSV and
tables use too) so a client can ask for "cos_alpha of layer 2 at alpha 0.5" directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from llfc_results import AnalysisResult, MetricRow


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
