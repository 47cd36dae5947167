"""Text views of the service's JSON for the ``llfc`` command: tables, key/value lines and the
flattened (key, value) pairs of CSV (the analyze result's CSV is :mod:`llfc_results.export`'s).

A sweep result is printed as one N x N table per pair kind and metric. The analyze result is
read as :class:`llfc_results.AnalysisResult` and printed from its rows
(:meth:`~llfc_results.AnalysisResult.rows`), the same rows the service stores and
``GET /v1/jobs/{id}/metrics`` serves, so the CSV, the tables and the service cannot disagree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from llfc_results import ENDPOINTS, AnalysisResult, SweepResult, VarianceRatio

LONG_LIST = 8
"""Lists longer than this are summarised in the key/value view (a permutation, a curve)."""

# --- Formatting --------------------------------------------------------------------------------


def format_number(value: Any) -> str:
    """Four decimals; scientific notation for tiny non-zero values; '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4f}"
    return str(value)


def format_percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Columns padded to their widest cell; the first column left-aligned, the others right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(cell).ljust(width) if index == 0 else str(cell).rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return (indent + "  ".join(padded)).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _is_record_list(value: Any) -> bool:
    """A list of flat objects with the same keys, such as the modes of a train result."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and item.keys() == value[0].keys() for item in value)
        and not any(isinstance(v, dict | list) for item in value for v in item.values())
    )


def key_value_lines(value: Any, indent: str = "") -> Iterator[str]:
    """A readable view of nested JSON: keys and values, nested objects indented, lists of flat
    objects as a table, long lists summarised by their length."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict) and item:
                yield f"{indent}{key}:"
                yield from key_value_lines(item, indent + "  ")
            elif _is_record_list(item):
                yield f"{indent}{key}:"
                headers = list(item[0])
                rows = [[format_number(record[h]) for h in headers] for record in item]
                yield format_table(headers, rows, indent + "  ")
            else:
                yield f"{indent}{key}: {_inline(item)}"
    else:
        yield f"{indent}{_inline(value)}"


def _inline(value: Any) -> str:
    if isinstance(value, list):
        if len(value) > LONG_LIST:
            return f"[{len(value)} values]"
        return "[" + ", ".join(_inline(item) for item in value) + "]"
    if isinstance(value, dict):
        # Opened like a list, so a merge's permutations (a list of {name: indices}) read as
        # lengths, not as every index of every input.
        return "{" + ", ".join(f"{key}: {_inline(item)}" for key, item in value.items()) + "}"
    return format_number(value)


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, scalar) pairs of nested JSON, for CSV: objects and lists of objects are
    opened (``modes.0.name``), lists of numbers kept whole as JSON text."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            yield from flatten(item, f"{prefix}.{index}")
    elif isinstance(value, list):
        yield prefix, json.dumps(value)
    else:
        yield prefix, value


# --- The analyze result ------------------------------------------------------------------------


Values = dict[tuple[str, str, str | None, float | None], Any]


def endpoints_table(result: AnalysisResult, values: Values) -> str:
    """A's and B's loss and error, labelled: where BatchNorm statistics were re-estimated on the
    job's data (what the barriers are measured against), also as uploaded."""
    sides = list(result.endpoints)

    def cells(metric: str, show: Any) -> list[str]:
        return [show(values.get((ENDPOINTS, metric, side, None))) for side in sides]

    reestimated = any(values.get((ENDPOINTS, "batch_norm_reestimated", s, None)) for s in sides)
    labelled = all(endpoint.as_uploaded is not None for endpoint in result.endpoints.values())
    measured = ", BatchNorm re-estimated" if reestimated else ""
    rows = [
        [f"loss{measured}", *cells("loss", format_number)],
        [f"error{measured}", *cells("error", format_percent)],
    ]
    if reestimated:
        rows += [
            ["loss as uploaded", *cells("loss_as_uploaded", format_number)],
            ["error as uploaded", *cells("error_as_uploaded", format_percent)],
        ]
    title = "Endpoints, as uploaded" if labelled and not reestimated else "Endpoints"
    return format_table([title, *(side.upper() for side in sides)], rows)


def analysis_table(result: AnalysisResult) -> str:
    """The analyze result as text tables in the spirit of the paper's Fig. 3.

    The endpoints (:func:`endpoints_table`); barriers and the Lemma per pair (naive against
    matched); then, per pair and layer, the A–B baseline E[1 - cos(f(A), f(B))] against the LLFC
    distance E[1 - cos(f(θ_α), αf(A) + (1-α)f(B))] at each LLFC alpha (LLFC holds where the latter
    is far below the former), Condition I (weak additivity of each activation) per alpha, and
    Condition II (commutativity) per weighted layer. With a list of repairs, also each repair's
    barriers per pair and each pair's variance ratio per repair site and LLFC alpha.
    """
    values: Values = {(r.pair, r.metric, r.layer, r.alpha): r.value for r in result.rows()}
    pairs = list(result.pairs)
    blocks: list[str] = []
    if result.endpoints:
        blocks.append(endpoints_table(result, values))

    def summary(label: str, metric: str, show: Any) -> list[str]:
        return [label, *(show(values.get((pair, metric, None, None))) for pair in pairs)]

    summary_rows = [
        summary("loss barrier", "loss_barrier", format_number),
        summary("error barrier", "error_barrier", format_percent),
        summary("max error on path", "max_error_on_path", format_percent),
        summary("lemma: max error ≤ 2ε", "holds", format_number),
    ]
    blocks.append(
        format_table(["Barriers", *(result.pair_label(pair) for pair in pairs)], summary_rows)
    )
    modes = list(
        dict.fromkeys(mode for pair in result.pairs.values() for mode in pair.repairs or {})
    )
    if modes:
        repair_rows = [
            row
            for mode in modes
            for row in (
                summary(f"loss barrier, {mode}", f"{mode}_loss_barrier", format_number),
                summary(f"error barrier, {mode}", f"{mode}_error_barrier", format_percent),
            )
        ]
        blocks.append(
            format_table(
                ["Barriers by repair", *(result.pair_label(pair) for pair in pairs)], repair_rows
            )
        )

    for name, pair in result.pairs.items():
        label = result.pair_label(name)
        llfc_alphas = [float(alpha) for alpha in pair.llfc.cos_alpha]
        weak_alphas = [float(alpha) for alpha in pair.weak_additivity]
        headers = [
            "layer",
            "A-B",
            *(f"α={alpha:g}" for alpha in llfc_alphas),
            *(f"Cond.I α={alpha:g}" for alpha in weak_alphas),
        ]
        rows = [
            [
                layer,
                format_number(values.get((name, "cos_ab", layer, None))),
                *(format_number(values.get((name, "cos_alpha", layer, a))) for a in llfc_alphas),
                *(
                    format_number(values.get((name, "weak_additivity", layer, a)))
                    for a in weak_alphas
                ),
            ]
            for layer in pair.llfc.layers
        ]
        blocks.append(
            f"LLFC, {label}: E[1 - cos] per layer, A-B baseline against "
            "the interpolation at α; Condition I per activation layer\n"
            + format_table(headers, rows)
        )
        if pair.commutativity_layers:
            blocks.append(
                f"Condition II (commutativity), {label}: per weighted layer\n"
                + format_table(
                    ["layer", "distance"],
                    [
                        [layer, format_number(values.get((name, "commutativity", layer, None)))]
                        for layer in pair.commutativity_layers
                    ],
                )
            )
        if pair.variance_ratio is not None:
            blocks.append(_variance_ratio_table(name, label, pair.variance_ratio, values))
    return "\n\n".join(blocks)


SWEEP_TITLES = {
    "loss_barrier": "loss barrier",
    "error_barrier": "error barrier",
    "llfc_distance": "LLFC distance at α=0.5 (mean over layers of E[1 - cos])",
}


def sweep_table(result: SweepResult) -> str:
    """The sweep's matrices as text: the models numbered once, then one N x N table per pair
    kind and metric, rows and columns by those numbers (row i, column j: model i as A)."""
    blocks = ["models:\n" + "\n".join(f"  {i}: {model}" for i, model in enumerate(result.models))]
    numbers = [str(index) for index in range(len(result.models))]
    for kind, by_metric in result.matrices.items():
        for metric, matrix in by_metric.items():
            show = format_percent if metric == "error_barrier" else format_number
            rows = [[numbers[i], *(show(value) for value in row)] for i, row in enumerate(matrix)]
            title = f"{SWEEP_TITLES.get(metric, metric)}, {kind}"
            blocks.append(f"{title}\n" + format_table(["", *numbers], rows))
    return "\n\n".join(blocks)


def _variance_ratio_table(pair: str, label: str, ratio: VarianceRatio, values: Values) -> str:
    """theta_alpha's pre-activation variance against REPAIR's target, per repair site and alpha."""
    alphas = [float(alpha) for alpha in ratio.ratio]
    rows = [
        [layer, *(format_number(values.get((pair, "variance_ratio", layer, a))) for a in alphas)]
        for layer in ratio.layers
    ]
    return (
        f"Variance collapse, {label}: θ_α's pre-activation variance against REPAIR's target "
        "(below 1: collapsed), per repair site\n"
        + format_table(["site", *(f"α={alpha:g}" for alpha in alphas)], rows)
    )
