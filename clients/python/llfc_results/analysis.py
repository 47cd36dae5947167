"""The analyze result (docs/API.md, "The analyze result") as typed data, and its one row iterator.

The engine builds an :class:`AnalysisResult` and sends :meth:`AnalysisResult.to_json` on the wire;
the service stores :meth:`AnalysisResult.rows` as its per-layer metric rows; the client reads
the JSON back with :meth:`AnalysisResult.from_json` and prints the same rows as CSV and tables.
This module imports the standard library only, so the engine (torch) and the client (no torch)
share it.

Lists of numbers hold None where the measured value was not finite: the service stores results
with NaN and infinities replaced by null (JSON has no such numbers).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Numbers = Sequence[float | None]
"""One value per alpha or per layer; None for a value that was not finite."""

ENDPOINTS = "endpoints"
"""The ``pair`` of the rows about A and B themselves (their ``layer`` is ``a`` or ``b``)."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _numbers(values: Any) -> Numbers:
    return [_number(value) for value in values] if isinstance(values, list) else []


def _lists_by_key(values: Any) -> dict[str, Numbers]:
    if not isinstance(values, Mapping):
        return {}
    return {str(alpha): _numbers(numbers) for alpha, numbers in values.items()}


@dataclass(frozen=True)
class MetricRow:
    """One number of the result: ``metric`` of ``pair`` at a layer and/or alpha.

    ``layer_index`` is the layer's position in its metric's layer list. ``value`` is a bool for
    ``holds`` and ``batch_norm_reestimated``, a number or None otherwise.
    """

    pair: str
    metric: str
    layer: str | None
    layer_index: int | None
    alpha: float | None
    value: float | bool | None


@dataclass(frozen=True)
class Lmc:
    """Loss and error of theta_alpha = alpha A + (1 - alpha) B, and their barriers."""

    alphas: list[float]
    loss: Numbers
    error: Numbers
    loss_barrier: float | None
    error_barrier: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "alphas": self.alphas,
            "loss": self.loss,
            "error": self.error,
            "loss_barrier": self.loss_barrier,
            "error_barrier": self.error_barrier,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Lmc:
        return cls(
            alphas=[float(alpha) for alpha in body["alphas"]],
            loss=_numbers(body["loss"]),
            error=_numbers(body["error"]),
            loss_barrier=_number(body.get("loss_barrier")),
            error_barrier=_number(body.get("error_barrier")),
        )


@dataclass(frozen=True)
class Llfc:
    """Per layer (each activation output and residual stream, then the logits): the A-B
    baseline ``cos_ab``, and per LLFC alpha (keyed like '0.5') the LLFC distance ``cos_alpha``
    and the scale ``scale_c``."""

    layers: list[str]
    cos_ab: Numbers
    cos_alpha: dict[str, Numbers]
    scale_c: dict[str, Numbers]

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "cos_ab": self.cos_ab,
            "cos_alpha": self.cos_alpha,
            "scale_c": self.scale_c,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Llfc:
        return cls(
            layers=[str(layer) for layer in body["layers"]],
            cos_ab=_numbers(body["cos_ab"]),
            cos_alpha=_lists_by_key(body.get("cos_alpha")),
            scale_c=_lists_by_key(body.get("scale_c")),
        )


@dataclass(frozen=True)
class Lemma:
    """The Lemma's check: the largest error on the path is at most twice the endpoints' worst."""

    epsilon: float | None
    max_error_on_path: float | None
    holds: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "max_error_on_path": self.max_error_on_path,
            "holds": self.holds,
        }


@dataclass(frozen=True)
class VarianceRatio:
    """Per repair site (``layers``) and LLFC alpha (keyed like '0.5'): the mean over channels of
    theta_alpha's pre-activation variance against the variance REPAIR gives it,
    (alpha sigma_A + (1 - alpha) sigma_B)^2, theta_alpha taken before REPAIR. Below 1: the
    variance has collapsed."""

    layers: list[str]
    ratio: dict[str, Numbers]

    def to_json(self) -> dict[str, Any]:
        return {"layers": self.layers, "ratio": self.ratio}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> VarianceRatio:
        return cls(
            layers=[str(layer) for layer in body["layers"]],
            ratio=_lists_by_key(body.get("ratio")),
        )


@dataclass(frozen=True)
class PairResult:
    """Everything measured about A and one B (as uploaded, or matched onto A)."""

    lmc: Lmc
    llfc: Llfc
    weak_additivity: dict[str, Numbers]
    """Condition I per LLFC alpha, one value per activation layer of
    ``weak_additivity_layers``."""
    weak_additivity_layers: list[str]
    commutativity: Numbers
    """Condition II, one value per weighted layer of ``commutativity_layers``."""
    commutativity_layers: list[str]
    commutativity_factors: dict[str, Numbers]
    """``weights`` d(W_A, W_B) and ``features`` d(H_A, H_B) per weighted layer."""
    lemma: Lemma | None
    repairs: dict[str, Lmc] | None = None
    """The LMC under each repair asked for ('none', 'reset', 'repair'); None unless the analysis
    was given a list of repairs (and in results from before repairs were offered)."""
    variance_ratio: VarianceRatio | None = None
    """Present exactly when ``repairs`` is."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "lmc": self.lmc.to_json(),
            "llfc": self.llfc.to_json(),
            "weak_additivity": self.weak_additivity,
            "weak_additivity_layers": self.weak_additivity_layers,
            "commutativity": self.commutativity,
            "commutativity_layers": self.commutativity_layers,
            "commutativity_factors": self.commutativity_factors,
        }
        if self.lemma is not None:
            body["lemma"] = self.lemma.to_json()
        if self.repairs is not None:
            body["repairs"] = {mode: {"lmc": lmc.to_json()} for mode, lmc in self.repairs.items()}
        if self.variance_ratio is not None:
            body["variance_ratio"] = self.variance_ratio.to_json()
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> PairResult:
        llfc = Llfc.from_json(body["llfc"])
        commutativity = _numbers(body.get("commutativity"))
        lemma = body.get("lemma")
        repairs = body.get("repairs")
        variance_ratio = body.get("variance_ratio")
        return cls(
            lmc=Lmc.from_json(body["lmc"]),
            llfc=llfc,
            weak_additivity=_lists_by_key(body.get("weak_additivity")),
            weak_additivity_layers=list(body.get("weak_additivity_layers") or llfc.layers[:-1]),
            commutativity=commutativity,
            commutativity_layers=list(
                body.get("commutativity_layers") or map(str, range(len(commutativity)))
            ),
            commutativity_factors=_lists_by_key(body.get("commutativity_factors")),
            lemma=Lemma(
                epsilon=_number(lemma.get("epsilon")),
                max_error_on_path=_number(lemma.get("max_error_on_path")),
                holds=bool(lemma.get("holds")),
            )
            if isinstance(lemma, Mapping)
            else None,
            repairs={str(mode): Lmc.from_json(entry["lmc"]) for mode, entry in repairs.items()}
            if isinstance(repairs, Mapping)
            else None,
            variance_ratio=VarianceRatio.from_json(variance_ratio)
            if isinstance(variance_ratio, Mapping)
            else None,
        )

    def rows(self, pair: str, *, with_lemma: bool = True) -> Iterator[MetricRow]:
        lmc, llfc = self.lmc, self.llfc
        for alpha, loss, error in zip(lmc.alphas, lmc.loss, lmc.error, strict=False):
            yield MetricRow(pair, "lmc_loss", None, None, alpha, loss)
            yield MetricRow(pair, "lmc_error", None, None, alpha, error)
        yield MetricRow(pair, "loss_barrier", None, None, None, lmc.loss_barrier)
        yield MetricRow(pair, "error_barrier", None, None, None, lmc.error_barrier)
        yield from _per_layer(pair, "cos_ab", llfc.layers, llfc.cos_ab, None)
        yield from _per_alpha_layer(pair, "cos_alpha", llfc.layers, llfc.cos_alpha)
        yield from _per_alpha_layer(pair, "scale_c", llfc.layers, llfc.scale_c)
        yield from _per_alpha_layer(
            pair, "weak_additivity", self.weak_additivity_layers, self.weak_additivity
        )
        yield from _per_layer(
            pair, "commutativity", self.commutativity_layers, self.commutativity, None
        )
        for mode, repaired in (self.repairs or {}).items():
            for alpha, loss, error in zip(
                repaired.alphas, repaired.loss, repaired.error, strict=False
            ):
                yield MetricRow(pair, f"{mode}_lmc_loss", None, None, alpha, loss)
                yield MetricRow(pair, f"{mode}_lmc_error", None, None, alpha, error)
            yield MetricRow(pair, f"{mode}_loss_barrier", None, None, None, repaired.loss_barrier)
            yield MetricRow(pair, f"{mode}_error_barrier", None, None, None, repaired.error_barrier)
        if self.variance_ratio is not None:
            ratio = self.variance_ratio
            yield from _per_alpha_layer(pair, "variance_ratio", ratio.layers, ratio.ratio)
        if with_lemma and self.lemma is not None:
            for metric, value in self.lemma.to_json().items():
                yield MetricRow(pair, metric, None, None, None, value)


def _per_layer(
    pair: str, metric: str, layers: Sequence[str], values: Numbers, alpha: float | None
) -> Iterator[MetricRow]:
    for index, (layer, value) in enumerate(zip(layers, values, strict=False)):
        yield MetricRow(pair, metric, layer, index, alpha, value)


def _per_alpha_layer(
    pair: str, metric: str, layers: Sequence[str], by_alpha: Mapping[str, Numbers]
) -> Iterator[MetricRow]:
    for alpha, values in by_alpha.items():
        yield from _per_layer(pair, metric, layers, values, float(alpha))


@dataclass(frozen=True)
class LossError:
    loss: float | None
    error: float | None

    def to_json(self) -> dict[str, Any]:
        return {"loss": self.loss, "error": self.error}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> LossError:
        return cls(loss=_number(body.get("loss")), error=_number(body.get("error")))


@dataclass(frozen=True)
class Endpoint:
    """A or B: loss and error as the barriers measure them (BatchNorm statistics re-estimated
    on the job's data when ``batch_norm_reestimated``), and as uploaded (its own statistics)."""

    measured: LossError
    batch_norm_reestimated: bool | None
    """None (and ``as_uploaded`` None) in the results of services before they were reported."""
    as_uploaded: LossError | None

    def to_json(self) -> dict[str, Any]:
        body = self.measured.to_json()
        if self.batch_norm_reestimated is not None:
            body["batch_norm_reestimated"] = self.batch_norm_reestimated
        if self.as_uploaded is not None:
            body["as_uploaded"] = self.as_uploaded.to_json()
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Endpoint:
        as_uploaded = body.get("as_uploaded")
        reestimated = body.get("batch_norm_reestimated")
        return cls(
            measured=LossError.from_json(body),
            batch_norm_reestimated=bool(reestimated) if reestimated is not None else None,
            as_uploaded=LossError.from_json(as_uploaded)
            if isinstance(as_uploaded, Mapping)
            else None,
        )

    def rows(self, side: str) -> Iterator[MetricRow]:
        yield MetricRow(ENDPOINTS, "loss", side, None, None, self.measured.loss)
        yield MetricRow(ENDPOINTS, "error", side, None, None, self.measured.error)
        if self.as_uploaded is not None:
            yield MetricRow(ENDPOINTS, "loss_as_uploaded", side, None, None, self.as_uploaded.loss)
            yield MetricRow(
                ENDPOINTS, "error_as_uploaded", side, None, None, self.as_uploaded.error
            )
            yield MetricRow(
                ENDPOINTS, "batch_norm_reestimated", side, None, None, self.batch_norm_reestimated
            )


@dataclass(frozen=True)
class AnalysisResult:
    """The result of an analyze job: the naive pair (B as uploaded) and, when a matching was
    asked for, the matched pair (B permuted onto A), the endpoints A and B, and what was run.

    ``matching`` (the matching's summary), ``settings`` and ``distances`` (each distance's
    definition) are kept as the JSON objects they are on the wire.
    """

    pairs: dict[str, PairResult]
    endpoints: dict[str, Endpoint]
    settings: dict[str, Any]
    distances: dict[str, str]
    matching: dict[str, Any] | None = None

    @property
    def match_method(self) -> str | None:
        """The matching that made the matched pair ('weight', 'activation'), or None."""
        method = self.settings.get("match")
        return method if isinstance(method, str) and method != "none" else None

    def pair_label(self, pair: str) -> str:
        """How tables and figures call a pair: 'naive', or e.g. 'weight-matched' (with
        orthogonal maps within heads: 'weight-matched+orthogonal')."""
        if pair == "matched":
            label = f"{self.match_method or 'matched'}-matched"
            if self.settings.get("symmetry") == "orthogonal":
                label += "+orthogonal"
            return label
        return pair

    def to_json(self) -> dict[str, Any]:
        """The analyze result as docs/API.md writes it, keys in its order."""
        body: dict[str, Any] = {
            "pairs": {name: pair.to_json() for name, pair in self.pairs.items()}
        }
        if self.matching is not None:
            body["matching"] = self.matching
        body["endpoints"] = {side: endpoint.to_json() for side, endpoint in self.endpoints.items()}
        body["settings"] = self.settings
        body["distances"] = self.distances
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> AnalysisResult:
        """Read a result from the wire; ``KeyError``/``TypeError`` when it is not one."""
        endpoints = body.get("endpoints")
        matching = body.get("matching")
        return cls(
            pairs={str(name): PairResult.from_json(pair) for name, pair in body["pairs"].items()},
            endpoints={
                str(side): Endpoint.from_json(endpoint) for side, endpoint in endpoints.items()
            }
            if isinstance(endpoints, Mapping)
            else {},
            settings=dict(body.get("settings") or {}),
            distances=dict(body.get("distances") or {}),
            matching=dict(matching) if isinstance(matching, Mapping) else None,
        )

    def rows(self, *, with_summary: bool = True) -> Iterator[MetricRow]:
        """Every number of the result as one row, in this order: the endpoints (pair
        ``endpoints``, layer ``a``/``b``: ``loss``, ``error``, ``loss_as_uploaded``,
        ``error_as_uploaded``, ``batch_norm_reestimated``), then per pair ``lmc_loss`` and
        ``lmc_error`` per alpha, ``loss_barrier``, ``error_barrier``, ``cos_ab`` per layer,
        ``cos_alpha`` and ``scale_c`` per layer and alpha, ``weak_additivity`` (Condition I) per
        ReLU layer and alpha, ``commutativity`` (Condition II) per weighted layer, with a list
        of repairs ``<mode>_lmc_loss`` and ``<mode>_lmc_error`` per alpha,
        ``<mode>_loss_barrier`` and ``<mode>_error_barrier`` per repair and ``variance_ratio``
        per repair site and LLFC alpha, and the Lemma's ``epsilon``, ``max_error_on_path`` and
        ``holds``.

        ``with_summary=False`` leaves out the endpoints and the Lemma: the per-layer and
        per-alpha numbers that ``GET /v1/jobs/{id}/metrics`` serves.
        """
        if with_summary:
            for side, endpoint in self.endpoints.items():
                yield from endpoint.rows(side)
        for name, pair in self.pairs.items():
            yield from pair.rows(name, with_lemma=with_summary)
