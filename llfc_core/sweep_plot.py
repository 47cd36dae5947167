"""The PNG heat map of a sweep result (docs/API.md, "The sweep result"), rendered headless as
:mod:`llfc_core.plots` renders an analysis.

One panel per metric (loss barrier, error barrier, mean LLFC distance at alpha 0.5) and pair
kind: naive on the first row, matched on the second when the sweep matched. A metric's naive
and matched panels share one colour scale, so a matching that connects the models shows as a
paler matrix. Entries are written in their cells while the matrices are small enough to read.
"""

from __future__ import annotations

import math

from llfc_core.plots import PAIR_COLOURS, figure_png
from llfc_results import SweepResult

try:
    from matplotlib.figure import Figure
except ModuleNotFoundError as error:  # the engine itself needs no matplotlib
    raise ModuleNotFoundError(
        "llfc_core.sweep_plot needs matplotlib: pip install 'llfc-align[plots]'."
    ) from error

SWEEP_PLOT = "sweep"
"""The one plot of a sweep job: ``GET /v1/jobs/{id}/plots/sweep.png``."""
METRIC_TITLES = {
    "loss_barrier": "loss barrier",
    "error_barrier": "error barrier",
    "llfc_distance": "LLFC distance E[1 - cos] at alpha 0.5, mean over layers",
}
ANNOTATED_MAX_MODELS = 8
"""Larger matrices are drawn without their numbers, which would no longer fit their cells."""
LABEL_LENGTH = 12


def _label(model: str) -> str:
    return model if len(model) <= LABEL_LENGTH else f"{model[: LABEL_LENGTH - 1]}…"


def _finite(values: list[list[float | None]]) -> list[list[float]]:
    return [[math.nan if value is None else value for value in row] for row in values]


def sweep_figure(result: SweepResult) -> Figure:
    """The sweep's matrices as heat maps, a row per pair kind and a column per metric."""
    kinds = list(result.matrices)
    metrics = list(METRIC_TITLES)
    size = len(result.models)
    cell = max(0.45, 3.2 / size)
    figure = Figure(
        figsize=(len(metrics) * (size * cell + 1.8), len(kinds) * (size * cell + 1.4)),
        layout="constrained",
    )
    panels = figure.subplots(len(kinds), len(metrics), squeeze=False)
    labels = [_label(model) for model in result.models]
    for column, metric in enumerate(metrics):
        values = [_finite(result.matrices[kind][metric]) for kind in kinds]
        finite = [v for matrix in values for row in matrix for v in row if not math.isnan(v)]
        low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
        for row, kind in enumerate(kinds):
            axes = panels[row][column]
            image = axes.imshow(values[row], cmap="magma_r", vmin=low, vmax=max(high, low + 1e-12))
            axes.set_title(
                f"{kind}: {METRIC_TITLES[metric]}", color=PAIR_COLOURS.get(kind), fontsize=9
            )
            axes.set_xticks(range(size), labels, rotation=60, ha="right", fontsize=7)
            axes.set_yticks(range(size), labels, fontsize=7)
            figure.colorbar(image, ax=axes, shrink=0.8)
            if size > ANNOTATED_MAX_MODELS:
                continue
            middle = (low + high) / 2
            for i, entries in enumerate(values[row]):
                for j, value in enumerate(entries):
                    text = "n/a" if math.isnan(value) else f"{value:.3g}"
                    colour = "white" if not math.isnan(value) and value > middle else "black"
                    axes.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    match = result.settings.get("match")
    figure.suptitle(
        f"Sweep of {size} models, {result.settings.get('num_examples')} examples"
        + (f", {match} matching" if match and match != "none" else ""),
        fontsize=11,
    )
    return figure


def render_sweep_plot(result: SweepResult) -> bytes:
    """The sweep's heat map as PNG bytes."""
    return figure_png(sweep_figure(result))
