"""The analyze result as CSV: one line per :meth:`AnalysisResult.rows` row; a sweep's
matrices as CSV: one line per entry.

One writer, used by ``GET /v1/jobs/{id}/result.csv`` (so by the web view's CSV download) and by
``llfc results --format csv``, so the two files are the same.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from llfc_results.analysis import AnalysisResult
from llfc_results.sweep import SweepResult

ANALYSIS_CSV_HEADERS = ("pair", "metric", "layer", "alpha", "value")
SWEEP_CSV_HEADERS = ("pair", "metric", "model_a", "model_b", "value")


def analysis_csv_rows(result: AnalysisResult) -> Iterator[tuple[Any, ...]]:
    """The result in long form, one CSV row per :meth:`AnalysisResult.rows` row."""
    for row in result.rows():
        yield row.pair, row.metric, row.layer, row.alpha, row.value


def write_csv(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    """CSV text with a header line; None is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow(["" if value is None else value for value in row])
    return buffer.getvalue()


def analysis_csv(result: AnalysisResult) -> str:
    """The whole result as CSV text, ``pair,metric,layer,alpha,value``."""
    return write_csv(analysis_csv_rows(result), ANALYSIS_CSV_HEADERS)


def sweep_csv(result: SweepResult) -> str:
    """Every entry of a sweep's matrices as CSV text, ``pair,metric,model_a,model_b,value``."""
    return write_csv(
        (
            (cell.pair, cell.metric, cell.model_a, cell.model_b, cell.value)
            for cell in result.cells()
        ),
        SWEEP_CSV_HEADERS,
    )
