"""The sweep result (docs/API.md, "The sweep result") as typed data, and its one row iterator.

A sweep analyses every unordered pair of N models; its result is N x N matrices, per pair kind
(``naive``, and ``matched`` when the sweep matched) and metric, built by
:meth:`SweepResult.from_pairs` from the pairs' own analyze results, so an entry is that pair's
``analyze`` number itself. Standard library only, as :mod:`llfc_results.analysis`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llfc_results.analysis import AnalysisResult, PairResult, _number

SWEEP_METRICS = ("loss_barrier", "error_barrier", "llfc_distance")
"""The matrices' metrics: the LMC loss and error barriers, and the mean over layers of
E[1 - cos_alpha] at alpha = :data:`SWEEP_LLFC_ALPHA` (the LLFC distance of the midpoint)."""
SWEEP_LLFC_ALPHA = "0.5"
"""The llfc_alphas key the LLFC distance matrix reads; a sweep needs it among its llfc_alphas."""

Matrix = list[list[float | None]]


def pair_metrics(pair: PairResult) -> dict[str, float | None]:
    """One pair kind's sweep metrics; the LLFC distance is None when a layer's is not finite
    or the analysis did not measure alpha 0.5."""
    distances = pair.llfc.cos_alpha.get(SWEEP_LLFC_ALPHA)
    llfc_distance = None
    if distances and all(value is not None for value in distances):
        llfc_distance = sum(value for value in distances if value is not None) / len(distances)
    return {
        "loss_barrier": _number(pair.lmc.loss_barrier),
        "error_barrier": _number(pair.lmc.error_barrier),
        "llfc_distance": llfc_distance,
    }


@dataclass(frozen=True)
class SweepPair:
    """One unordered pair of a sweep: model ``index_a`` as A, model ``index_b`` as B
    (``index_a < index_b``), and its analysis."""

    index_a: int
    index_b: int
    analysis: AnalysisResult


@dataclass(frozen=True)
class SweepCell:
    """One entry of a sweep matrix: ``metric`` of pair kind ``pair`` between two models."""

    pair: str
    metric: str
    model_a: str
    model_b: str
    value: float | None


@dataclass(frozen=True)
class SweepResult:
    """A sweep's ``models`` (ids or names, in the order asked) and its matrices,
    ``matrices[pair][metric][i][j]``: symmetric, zero on the diagonal (a model with itself is
    connected: its path is the model itself at every alpha, see
    :func:`llfc_core.analysis.sweep.analyze_sweep`), and for ``i < j`` the number of the
    analysis with model i as A and model j as B. ``settings`` are the analyses' (all alike).
    """

    models: list[str]
    matrices: dict[str, dict[str, Matrix]]
    settings: dict[str, Any]

    @classmethod
    def from_pairs(cls, models: Sequence[str], pairs: Sequence[SweepPair]) -> SweepResult:
        """The matrices of ``pairs``, which must hold every unordered pair of ``models`` once."""
        size = len(models)
        expected = {(a, b) for a in range(size) for b in range(a + 1, size)}
        given = [(pair.index_a, pair.index_b) for pair in pairs]
        if sorted(given) != sorted(expected):
            raise ValueError(
                f"A sweep of {size} models needs each of its {len(expected)} pairs once."
            )
        kinds = list(pairs[0].analysis.pairs)
        matrices: dict[str, dict[str, Matrix]] = {
            kind: {
                metric: [[0.0 if i == j else None for j in range(size)] for i in range(size)]
                for metric in SWEEP_METRICS
            }
            for kind in kinds
        }
        for pair in pairs:
            for kind in kinds:
                for metric, value in pair_metrics(pair.analysis.pairs[kind]).items():
                    matrices[kind][metric][pair.index_a][pair.index_b] = value
                    matrices[kind][metric][pair.index_b][pair.index_a] = value
        return cls(list(models), matrices, dict(pairs[0].analysis.settings))

    def to_json(self) -> dict[str, Any]:
        """The sweep result as docs/API.md writes it."""
        return {
            "models": self.models,
            "metrics": list(SWEEP_METRICS),
            "llfc_alpha": float(SWEEP_LLFC_ALPHA),
            "matrices": self.matrices,
            "settings": self.settings,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> SweepResult:
        """Read a result from the wire; ``KeyError``/``TypeError`` when it is not one."""
        matrices = {
            str(kind): {
                str(metric): [[_number(value) for value in row] for row in matrix]
                for metric, matrix in by_metric.items()
            }
            for kind, by_metric in body["matrices"].items()
        }
        return cls([str(model) for model in body["models"]], matrices, dict(body["settings"]))

    def cells(self) -> Iterator[SweepCell]:
        """Every entry of every matrix, by pair kind, metric, then row by row."""
        for kind, by_metric in self.matrices.items():
            for metric, matrix in by_metric.items():
                for model_a, row in zip(self.models, matrix, strict=True):
                    for model_b, value in zip(self.models, row, strict=True):
                        yield SweepCell(kind, metric, model_a, model_b, value)
