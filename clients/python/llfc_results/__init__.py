"""The vocabulary of LLFC Align's contract as typed data (analysis and sweep results, job kinds
and statuses), shared by the engine, the server and the client (standard library only: no
torch, no httpx)."""

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
from llfc_results.export import (
    ANALYSIS_CSV_HEADERS,
    analysis_csv,
    analysis_csv_rows,
    sweep_csv,
    write_csv,
)
from llfc_results.jobs import FINISHED_STATUSES, MULTI_MODEL_KINDS, JobKind, JobStatus
from llfc_results.sweep import SWEEP_METRICS, SweepCell, SweepPair, SweepResult

__all__ = [
    "ANALYSIS_CSV_HEADERS",
    "ENDPOINTS",
    "FINISHED_STATUSES",
    "MULTI_MODEL_KINDS",
    "SWEEP_METRICS",
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
    "SweepCell",
    "SweepPair",
    "SweepResult",
    "VarianceRatio",
    "analysis_csv",
    "analysis_csv_rows",
    "sweep_csv",
    "write_csv",
]
