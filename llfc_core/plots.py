"""PNG plots of an analyze result (docs/API.md, "The analyze result"), rendered headless.

Three pictures, each comparing B as uploaded ("naive") with B after matching when the result
has a matched pair:

- ``lmc``: loss and error of theta_alpha = alpha A + (1 - alpha) B against alpha, with the
  barriers in the legend and the straight line between the endpoints that a barrier is
  measured from; for a BatchNorm net, whose endpoints are measured with re-estimated
  statistics, also A and B as uploaded, marked apart. A result that compares repairs draws
  each repair's curve, in its pair's colour and the repair's line style.
- ``llfc``: per layer, the baseline E[1 - cos(f_l(A), f_l(B))] beside the LLFC distance
  E[1 - cos(f_l(theta_alpha), alpha f_l(A) + (1 - alpha) f_l(B))] at each LLFC alpha, in the
  spirit of the poster's Fig. 3: LLFC holds where the alpha bars sit far below the baseline.
- ``conditions``: Condition I (weak additivity of ReLU) per ReLU layer and alpha, and
  Condition II (commutativity) per weighted layer beside its two factors d(W_A, W_B) and
  d(H_A, H_B), whose product bounds it (the poster's Eq. 2).

The service serves these PNGs (GET /v1/jobs/{id}/plots/{name}.png); a notebook gets the same
figures from :func:`plot_figure` on what ``analyze_pair(...)`` returns, and a stored result
drawn through :meth:`llfc_results.AnalysisResult.from_json`. matplotlib comes with the
``plots`` extra. Figures are built with :class:`matplotlib.figure.Figure` and drawn by the Agg
canvas directly, never through pyplot, so rendering keeps no global state and is safe from
request threads.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from llfc_results import AnalysisResult, Lmc, LossError, PairResult
from llfc_results.analysis import Numbers

try:
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter
except ModuleNotFoundError as error:  # the engine itself needs no matplotlib
    raise ModuleNotFoundError(
        "llfc_core.plots needs matplotlib: pip install 'llfc-align[plots]'."
    ) from error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 100
# A panel's values switch to a log axis when the positive ones span more than this ratio, so
# distances of 1e-3 stay visible beside a baseline of 0.5.
LOG_SPAN = 30.0
PAIR_COLOURS = {"naive": "#c0392b", "matched": "#1f5fa8"}
BASELINE_COLOUR = "#8c8c8c"
AS_UPLOADED_COLOUR = "#000000"
ALPHA_COLOURS = ("#f3a953", "#e8663d", "#b8345a", "#7a2a7f", "#3d2a7f")
FACTOR_COLOURS = {"commutativity": "#2c7fb8", "weights": "#a1dab4", "features": "#41b6c4"}
REPAIR_LINE_STYLES = {"none": "--", "reset": "-.", "repair": "-"}
"""How each repair's curve is drawn when a result compares repairs (the pair keeps its colour)."""
# More layers than this put the naive and matched panels above each other instead of side by side.
SIDE_BY_SIDE_MAX_LAYERS = 8


class UnknownPlotError(LookupError):
    """A plot name that :data:`PLOT_NAMES` does not hold."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.message = (
            f"There is no plot named {name!r}; the plots of an analysis are "
            f"{', '.join(PLOT_NAMES)}."
        )
        super().__init__(self.message)


@dataclass(frozen=True)
class _Pair:
    """One measured pair of the result and how to call it in a legend or title."""

    key: str
    label: str
    data: PairResult


Metric = Literal["loss", "error"]


def _pairs(result: AnalysisResult) -> list[_Pair]:
    """The naive pair, then the matched one when the analysis asked for a matching."""
    method = result.match_method
    matched_label = f"{method} matching" if method else "matched"
    found = [_Pair("naive", "naive (B as uploaded)", result.pairs["naive"])]
    matched = result.pairs.get("matched")
    if matched is not None:
        found.append(_Pair("matched", f"{matched_label} (B permuted onto A)", matched))
    return found


def _number(value: float | None) -> float:
    """A measured number, or NaN for the None that stands in for a non-finite value."""
    return math.nan if value is None else float(value)


def _numbers(values: Numbers) -> list[float]:
    return [_number(value) for value in values]


def _along_path(lmc: Lmc, metric: Metric) -> tuple[Numbers, float | None]:
    """``metric`` of theta_alpha at each alpha, and its barrier."""
    return (lmc.loss, lmc.loss_barrier) if metric == "loss" else (lmc.error, lmc.error_barrier)


def _at_endpoint(measured: LossError, metric: Metric) -> float:
    return _number(measured.loss if metric == "loss" else measured.error)


def _context(result: AnalysisResult) -> str:
    examples = result.settings.get("num_examples")
    return f" — {examples:,} examples" if isinstance(examples, int) else ""


def _short(name: str, limit: int = 14) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def _relu_labels(layers: Sequence[str]) -> list[str]:
    return [
        "logits" if name == "logits" else f"ReLU {index + 1}\n({_short(name)})"
        for index, name in enumerate(layers)
    ]


def _weighted_labels(layers: Sequence[str]) -> list[str]:
    return [f"layer {index + 1}\n({_short(name)})" for index, name in enumerate(layers)]


def _alpha_colour(index: int) -> str:
    return ALPHA_COLOURS[index % len(ALPHA_COLOURS)]


def _use_log(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return len(positive) > 1 and max(positive) / min(positive) > LOG_SPAN


def _grouped_bars(
    axes: Axes,
    tick_labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], str]],
    log: bool,
) -> None:
    """Bars of every series for each tick. Zeros and missing values are labelled "0" and "n/a":
    neither shows as a bar (a log axis cannot draw them), and a reader must tell them apart."""
    count = len(series)
    width = 0.8 / count
    for index, (label, values, colour) in enumerate(series):
        offsets = [tick + (index - (count - 1) / 2) * width for tick in range(len(tick_labels))]
        drawn = [v if v > 0 or not log else math.nan for v in values]
        axes.bar(offsets, drawn, width, label=label, color=colour, edgecolor="white", linewidth=0.5)
        for x, value in zip(offsets, values, strict=True):
            if not math.isfinite(value) or value == 0:
                text = "n/a" if not math.isfinite(value) else "0"
                axes.annotate(
                    text,
                    (x, 0),
                    xycoords=("data", "axes fraction"),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    fontsize=7,
                    color="#444444",
                )
    if len(tick_labels) > SIDE_BY_SIDE_MAX_LAYERS:
        # Many layers: one-line labels, slanted so that long module names do not collide.
        flat = [label.replace("\n", " ") for label in tick_labels]
        axes.set_xticks(range(len(flat)), flat, fontsize=8, rotation=35, ha="right")
    else:
        axes.set_xticks(range(len(tick_labels)), tick_labels, fontsize=8)
    axes.set_xlim(-0.5, len(tick_labels) - 0.5)
    if log:
        axes.set_yscale("log")
    axes.grid(axis="y", which="major", alpha=0.3)
    axes.set_axisbelow(True)


def _shared_legend(figure: Figure, panels: Sequence[Axes]) -> None:
    """One legend under the figure for panels that draw the same series."""
    handles, labels = panels[0].get_legend_handles_labels()
    columns = min(len(labels), 4 if figure.get_figwidth() >= 10 else 2)
    figure.legend(handles, labels, loc="outside lower center", ncols=columns, fontsize=9)


def _row_legend(panels: Sequence[Axes], title: str) -> None:
    """One legend right of a row of panels that draw the same series."""
    panels[-1].legend(
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=8,
        title=title,
        title_fontsize=8,
        alignment="left",
    )


def _share_limits(panels: Sequence[Axes], values: Sequence[float], log: bool) -> None:
    """One y range for every panel of a row, so naive and matched compare at a glance; on a
    log axis it reaches below the smallest value so that no bar shrinks to nothing."""
    finite = [v for v in values if math.isfinite(v)]
    positive = [v for v in finite if v > 0]
    if log and positive:
        low, high = min(positive) / 2.5, max(positive) * 1.6
    elif finite and max(finite) > 0:
        low, high = min(0.0, *finite), max(finite) * 1.08
    else:
        return
    for panel in panels:
        panel.set_ylim(low, high)


def _panel_grid(figure: Figure, rows: int, pairs: Sequence[_Pair], layers: int) -> list[list[Axes]]:
    """``rows`` x len(pairs) panels: pairs side by side, or stacked when layers are many."""
    columns = len(pairs)
    if columns > 1 and layers > SIDE_BY_SIDE_MAX_LAYERS:
        grid = figure.subplots(rows * columns, 1, squeeze=False)
        return [
            [grid[row * columns + column][0] for column in range(columns)] for row in range(rows)
        ]
    grid = figure.subplots(rows, columns, squeeze=False)
    return [list(grid[row]) for row in range(rows)]


def _figure_size(rows: int, pairs: int, layers: int) -> tuple[float, float]:
    if pairs > 1 and layers > SIDE_BY_SIDE_MAX_LAYERS:
        return (max(10.0, 0.55 * layers + 2), 3.6 * rows * pairs + 0.8)
    per_panel = max(5.0, 0.9 * layers + 1.5)
    return (min(per_panel * pairs + 0.6, 22.0), 4.2 * rows + 0.8)


# --- The plots ------------------------------------------------------------------------------


def _curves(pair: _Pair) -> list[tuple[str | None, Lmc]]:
    """The pair's LMC under each repair of a list (the first is ``lmc`` itself), or ``lmc``
    alone (None: one repair, not named)."""
    if pair.data.repairs:
        return list(pair.data.repairs.items())
    return [(None, pair.data.lmc)]


def lmc_figure(result: AnalysisResult) -> Figure:
    """Loss and error along the linear path, one line per pair, barriers in the legend."""
    pairs = _pairs(result)
    endpoints = result.endpoints
    figure = Figure(figsize=(12, 4.6), dpi=DPI, layout="constrained")
    loss_axes, error_axes = figure.subplots(1, 2)
    metrics: tuple[tuple[Axes, Metric, str], ...] = (
        (loss_axes, "loss", "Loss along the path"),
        (error_axes, "error", "Error along the path"),
    )
    for axes, metric, title in metrics:
        for pair in pairs:
            for mode, lmc in _curves(pair):
                values, stored_barrier = _along_path(lmc, metric)
                barrier = _number(stored_barrier)
                shown = f"{barrier:.1%}" if metric == "error" else f"{barrier:.3g}"
                repaired = "" if mode is None else f", repair {mode!r}"
                axes.plot(
                    list(lmc.alphas),
                    _numbers(values),
                    marker="o",
                    markersize=4,
                    color=PAIR_COLOURS[pair.key],
                    linestyle="-" if mode is None else REPAIR_LINE_STYLES[mode],
                    label=f"{pair.label}{repaired}: {metric} barrier {shown}",
                )
        if "a" in endpoints and "b" in endpoints:
            reestimated = any(endpoints[side].batch_norm_reestimated for side in "ab")
            axes.plot(
                [0.0, 1.0],
                [
                    _at_endpoint(endpoints["b"].measured, metric),
                    _at_endpoint(endpoints["a"].measured, metric),
                ],
                linestyle=":",
                color=BASELINE_COLOUR,
                label="straight line between the endpoints"
                + (", BatchNorm re-estimated" if reestimated else "")
                + " (barrier reference)",
            )
            if reestimated:
                as_uploaded = {side: endpoints[side].as_uploaded for side in "ab"}
                uploaded = {
                    side: math.nan if measured is None else _at_endpoint(measured, metric)
                    for side, measured in as_uploaded.items()
                }
                uploaded_text = {
                    side: f"{value:.1%}" if metric == "error" else f"{value:.3g}"
                    for side, value in uploaded.items()
                }
                axes.plot(
                    [0.0, 1.0],
                    [uploaded["b"], uploaded["a"]],
                    linestyle="none",
                    marker="s",
                    markersize=7,
                    markerfacecolor="none",
                    color=AS_UPLOADED_COLOUR,
                    label=f"A and B as uploaded (their own BatchNorm statistics): "
                    f"A {uploaded_text['a']}, B {uploaded_text['b']}",
                )
        axes.set_title(title)
        axes.set_xlabel(
            r"$\alpha$   ($\theta_\alpha = \alpha\,\theta_A + (1-\alpha)\,\theta_B$;"
            r"  $\alpha = 0$ is B, $\alpha = 1$ is A)"
        )
        axes.set_ylabel(rf"{metric} of $\theta_\alpha$")
        axes.set_xlim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    error_axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    figure.suptitle(f"Linear mode connectivity{_context(result)}", fontsize=13)
    return figure


def llfc_figure(result: AnalysisResult) -> Figure:
    """Per layer, E[1 - cos_AB] against E[1 - cos_alpha] for every LLFC alpha, one panel a pair."""
    pairs = _pairs(result)
    layers = list(pairs[0].data.llfc.layers)
    figure = Figure(figsize=_figure_size(1, len(pairs), len(layers)), dpi=DPI, layout="constrained")
    panels = _panel_grid(figure, 1, pairs, len(layers))[0]
    series_by_pair = []
    for pair in pairs:
        llfc = pair.data.llfc
        series = [("baseline E[1 − cos(f_A, f_B)]", _numbers(llfc.cos_ab), BASELINE_COLOUR)]
        series += [
            (f"LLFC E[1 − cos_α], α = {alpha}", _numbers(values), _alpha_colour(index))
            for index, (alpha, values) in enumerate(llfc.cos_alpha.items())
        ]
        series_by_pair.append(series)
    values = [v for series in series_by_pair for _, numbers, _ in series for v in numbers]
    log = _use_log(values)
    for axes, pair, series in zip(panels, pairs, series_by_pair, strict=True):
        _grouped_bars(axes, _relu_labels(layers), series, log)
        axes.set_title(pair.label)
        axes.set_xlabel("layer: each ReLU output, then the logits")
        axes.set_ylabel("mean cosine distance over examples" + (" (log)" if log else ""))
    _share_limits(panels, values, log)
    _shared_legend(figure, panels)
    figure.suptitle(
        f"Layerwise linear feature connectivity{_context(result)}\n"
        "LLFC holds where the α bars sit far below the grey A–B baseline",
        fontsize=12,
    )
    return figure


def _weak_additivity_series(pair: _Pair) -> list[tuple[str, list[float], str]]:
    return [
        (f"α = {alpha}", _numbers(values), _alpha_colour(index))
        for index, (alpha, values) in enumerate(pair.data.weak_additivity.items())
    ]


def _commutativity_series(pair: _Pair) -> list[tuple[str, list[float], str]]:
    factors = pair.data.commutativity_factors
    return [
        (
            "Condition II itself:\nd(W_A H_A + W_B H_B, W_A H_B + W_B H_A)",
            _numbers(pair.data.commutativity),
            FACTOR_COLOURS["commutativity"],
        ),
        ("factor d(W_A, W_B)", _numbers(factors["weights"]), FACTOR_COLOURS["weights"]),
        ("factor d(H_A, H_B)", _numbers(factors["features"]), FACTOR_COLOURS["features"]),
    ]


def conditions_figure(result: AnalysisResult) -> Figure:
    """Condition I per ReLU layer and alpha (top row), Condition II and its factors per weighted
    layer (bottom row), one column a pair."""
    pairs = _pairs(result)
    relu_layers = list(pairs[0].data.weak_additivity_layers)
    weighted_layers = list(pairs[0].data.commutativity_layers)
    widest = max(len(relu_layers), len(weighted_layers))
    width, height = _figure_size(2, len(pairs), widest)
    # Room for the legends right of the panels and for the two-line title.
    figure = Figure(figsize=(max(width + 2.6, 10.0), height), dpi=DPI, layout="constrained")
    rows = _panel_grid(figure, 2, pairs, widest)
    for panels, make_series, tick_labels, title, xlabel, legend_title in (
        (
            rows[0],
            _weak_additivity_series,
            _relu_labels(relu_layers),
            "Condition I: weak additivity of ReLU",
            "ReLU layer",
            "d(σ(αh_A + (1−α)h_B),\n   ασ(h_A) + (1−α)σ(h_B))\nh: pre-activations",
        ),
        (
            rows[1],
            _commutativity_series,
            _weighted_labels(weighted_layers),
            "Condition II: commutativity",
            "weighted layer",
            "W: the layer's weights\nH: its input features",
        ),
    ):
        series_by_pair = [make_series(pair) for pair in pairs]
        values = [v for series in series_by_pair for _, numbers, _ in series for v in numbers]
        log = _use_log(values)
        for axes, pair, series in zip(panels, pairs, series_by_pair, strict=True):
            _grouped_bars(axes, tick_labels, series, log)
            axes.set_title(f"{title}\n{pair.label}", fontsize=10)
            axes.set_xlabel(xlabel)
            axes.set_ylabel("relative squared distance" + (" (log)" if log else ""))
        _share_limits(panels, values, log)
        _row_legend(panels, legend_title)
    figure.suptitle(
        f"Conditions behind LLFC{_context(result)}\n"
        "d is the relative squared distance ||u − v||² / (½||u||² + ½||v||²): "
        "0 means the condition holds exactly",
        fontsize=12,
    )
    return figure


PLOTS: dict[str, Callable[[AnalysisResult], Figure]] = {
    "lmc": lmc_figure,
    "llfc": llfc_figure,
    "conditions": conditions_figure,
}
PLOT_NAMES: tuple[str, ...] = tuple(PLOTS)


def check_plot_name(name: str) -> None:
    """Raise :class:`UnknownPlotError` unless ``name`` is one of :data:`PLOT_NAMES`."""
    if name not in PLOTS:
        raise UnknownPlotError(name)


def plot_figure(result: AnalysisResult, name: str) -> Figure:
    """The figure of plot ``name`` for an analyze result; :class:`UnknownPlotError` otherwise."""
    check_plot_name(name)
    return PLOTS[name](result)


def render_plot(result: AnalysisResult, name: str) -> bytes:
    """Plot ``name`` of an analyze result as PNG bytes."""
    return figure_png(plot_figure(result, name))


def figure_png(figure: Figure) -> bytes:
    """``figure`` drawn as PNG bytes."""
    buffer = io.BytesIO()
    # savefig, not FigureCanvasAgg.print_png (untyped): the figure draws on an Agg canvas all
    # the same, with no pyplot involved.
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
