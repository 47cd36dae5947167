"""The vocabulary of LLFC Align's contract as typed data (analysis results, job kinds and
statuses), shared by the engine, the server and the client (standard library only: no torch, no
httpx)."""

from llfc_results.analysis import (
    ENDPOINTS,
    AnalysisResult,
    Endpoint,
    Lemma,
    Llfc,
    Lmc,
    LossError,
    MetricRow,
    PairResult,
    VarianceRatio,
)
from llfc_results.export import ANALYSIS_CSV_HEADERS, analysis_csv, analysis_csv_rows, write_csv
from llfc_results.jobs import FINISHED_STATUSES, JobKind, JobStatus

__all__ = [
    "ANALYSIS_CSV_HEADERS",
    "ENDPOINTS",
    "FINISHED_STATUSES",
    "AnalysisResult",
    "Endpoint",
    "JobKind",
    "JobStatus",
    "Lemma",
    "Llfc",
    "Lmc",
    "LossError",
    "MetricRow",
    "PairResult",
    "VarianceRatio",
    "analysis_csv",
    "analysis_csv_rows",
    "write_csv",
]
