"""PNG plots of an analyze result: every plot renders from a real analysis, the engine's typed
result and the same result read back from its stored JSON draw the same PNG, names are checked,
a result without a matched pair shows the naive pair alone, and GET /v1/jobs/{id}/plots/{name}.png
serves them to the job's owner only, once the job has succeeded."""

from __future__ import annotations

import copy
import io
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from support.api import (
    LONG_ANALYZE_WIDTHS,
    long_analyze_body,
    mlp_arch,
    run_job,
    submit,
    upload_mlp,
    wait_for_job,
)
from support.batch_norm import trained_resnet_pair, with_wrong_running_statistics

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.data import digits
from llfc_core.plots import PLOT_NAMES, PNG_SIGNATURE, UnknownPlotError, plot_figure, render_plot
from llfc_core.training import TrainConfig, train_modes
from llfc_results import AnalysisResult

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def engine_result() -> AnalysisResult:
    """A real analysis with weight matching of two small digit MLPs trained from two seeds."""
    arch = parse_arch({"name": "mlp", "widths": [64, 32, 32, 10]})
    state_a, state_b = train_modes(arch, digits("train"), TrainConfig(epochs=2), device=CPU)
    return analyze_pair(
        arch,
        state_a,
        state_b,
        digits("test").limit(200),
        AnalysisConfig(match="weight"),
        train_dataset=digits("train"),
        device=CPU,
    )


@pytest.fixture(scope="module")
def result(engine_result: AnalysisResult) -> dict[str, Any]:
    """The analysis as the service stores it: its JSON."""
    return engine_result.to_json()


@pytest.fixture()
def naive_only(result: dict[str, Any]) -> dict[str, Any]:
    naive = copy.deepcopy(result)
    del naive["pairs"]["matched"]
    naive["settings"]["match"] = "none"
    return naive


def _figure(result: dict[str, Any], name: str) -> Figure:
    """The figure of a stored result, read back into the typed result as the service does."""
    return plot_figure(AnalysisResult.from_json(result), name)


def _png(result: dict[str, Any], name: str) -> bytes:
    return render_plot(AnalysisResult.from_json(result), name)


def _titles(figure: Figure) -> list[str]:
    return [axes.get_title() for axes in figure.axes]


def _texts(figure: Figure) -> list[str]:
    return [text.get_text() for axes in figure.axes for text in axes.texts]


@pytest.mark.parametrize("name", PLOT_NAMES)
def test_each_plot_renders_a_png_with_drawn_content(result: dict[str, Any], name: str) -> None:
    png = _png(result, name)
    assert png.startswith(PNG_SIGNATURE)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    height, width = image.shape
    assert 800 <= width <= 2400
    assert 350 <= height <= 2000
    # More than a blank canvas: a good share of the pixels is not white.
    assert (image < 250).mean() > 0.05


@pytest.mark.parametrize("name", PLOT_NAMES)
def test_the_engine_result_and_its_stored_json_draw_the_same_png(
    engine_result: AnalysisResult, result: dict[str, Any], name: str
) -> None:
    assert render_plot(engine_result, name) == _png(result, name)


def test_the_plot_names_are_lmc_llfc_and_conditions() -> None:
    assert PLOT_NAMES == ("lmc", "llfc", "conditions")


def test_an_unknown_plot_name_is_refused_with_a_sentence_listing_the_names(
    result: dict[str, Any],
) -> None:
    with pytest.raises(UnknownPlotError) as refused:
        _png(result, "barriers")
    assert refused.value.name == "barriers"
    assert "'barriers'" in refused.value.message
    for name in PLOT_NAMES:
        assert name in refused.value.message


def test_lmc_draws_both_pairs_with_their_barriers_in_the_legend(result: dict[str, Any]) -> None:
    figure = _figure(result, "lmc")
    loss_axes, error_axes = figure.axes
    naive = result["pairs"]["naive"]["lmc"]
    matched = result["pairs"]["matched"]["lmc"]
    legend = [text.get_text() for text in loss_axes.get_legend().get_texts()]
    assert f"naive (B as uploaded): loss barrier {naive['loss_barrier']:.3g}" in legend
    assert (
        f"weight matching (B permuted onto A): loss barrier {matched['loss_barrier']:.3g}" in legend
    )
    error_legend = [text.get_text() for text in error_axes.get_legend().get_texts()]
    assert any(f"error barrier {matched['error_barrier']:.1%}" in text for text in error_legend)
    naive_line = loss_axes.get_lines()[0]
    assert list(naive_line.get_xdata()) == naive["alphas"]
    assert list(naive_line.get_ydata()) == pytest.approx(naive["loss"])


def test_lmc_of_a_batch_norm_pair_marks_the_endpoints_as_uploaded_apart() -> None:
    arch, state_a, state_b = trained_resnet_pair()
    uploaded_a = with_wrong_running_statistics(state_a)
    bn_result = analyze_pair(
        arch, uploaded_a, state_b, digits("test").limit(300), device=CPU
    ).to_json()
    endpoints = bn_result["endpoints"]

    figure = _figure(bn_result, "lmc")

    for axes, metric in zip(figure.axes, ("loss", "error"), strict=True):
        lines = {line.get_label(): line for line in axes.get_lines()}
        reference = lines[
            "straight line between the endpoints, BatchNorm re-estimated (barrier reference)"
        ]
        assert list(reference.get_ydata()) == [endpoints["b"][metric], endpoints["a"][metric]]
        (as_uploaded,) = (line for label, line in lines.items() if "as uploaded (" in label)
        assert list(as_uploaded.get_xdata()) == [0.0, 1.0]
        assert list(as_uploaded.get_ydata()) == [
            endpoints["b"]["as_uploaded"][metric],
            endpoints["a"]["as_uploaded"][metric],
        ]
    error_label = next(
        line.get_label()
        for line in figure.axes[1].get_lines()
        if "as uploaded (" in line.get_label()
    )
    assert f"A {endpoints['a']['as_uploaded']['error']:.1%}" in error_label


def test_lmc_of_a_result_comparing_repairs_draws_each_repairs_curve() -> None:
    arch = parse_arch({"name": "mlp", "widths": [64, 32, 32, 10]})
    torch.manual_seed(0)
    state_a, state_b = arch.build().state_dict(), arch.build().state_dict()
    compared = analyze_pair(
        arch,
        state_a,
        state_b,
        digits("test").limit(100),
        AnalysisConfig(match="weight", alphas=[0, 0.5, 1], repair=["none", "repair"]),
        train_dataset=digits("train").limit(300),
        device=CPU,
    ).to_json()

    figure = _figure(compared, "lmc")

    for axes, metric in zip(figure.axes, ("loss", "error"), strict=True):
        lines = {line.get_label(): line for line in axes.get_lines()}
        for pair, label in (("naive", "naive (B as uploaded)"), ("matched", "weight matching")):
            for mode, style in (("none", "--"), ("repair", "-")):
                lmc = compared["pairs"][pair]["repairs"][mode]["lmc"]
                (line,) = (
                    line
                    for text, line in lines.items()
                    if text.startswith(f"{label}") and f", repair '{mode}': {metric}" in text
                )
                assert list(line.get_ydata()) == pytest.approx(lmc[metric])
                assert line.get_linestyle() == style
    # Two pairs, two repairs each, and the barrier reference.
    assert len(figure.axes[0].get_lines()) == 5


def test_lmc_of_a_batch_norm_free_pair_draws_one_set_of_endpoints(result: dict[str, Any]) -> None:
    labels = [line.get_label() for line in _figure(result, "lmc").axes[0].get_lines()]
    assert "straight line between the endpoints (barrier reference)" in labels
    assert not any("as uploaded (" in label for label in labels)


def test_llfc_has_one_panel_per_pair_with_the_baseline_and_every_alpha(
    result: dict[str, Any],
) -> None:
    figure = _figure(result, "llfc")
    assert _titles(figure) == ["naive (B as uploaded)", "weight matching (B permuted onto A)"]
    layers = result["pairs"]["matched"]["llfc"]["layers"]
    alphas = result["pairs"]["matched"]["llfc"]["cos_alpha"]
    matched_axes = figure.axes[1]
    # One bar per layer for the baseline and for each LLFC alpha.
    assert len(matched_axes.patches) == len(layers) * (1 + len(alphas))
    baseline_heights = [bar.get_height() for bar in matched_axes.patches[: len(layers)]]
    assert baseline_heights == pytest.approx(result["pairs"]["matched"]["llfc"]["cos_ab"])
    # Both panels share one y range so that naive and matched compare at a glance.
    assert figure.axes[0].get_ylim() == figure.axes[1].get_ylim()


def test_conditions_show_condition_one_and_condition_two_with_its_factors(
    result: dict[str, Any],
) -> None:
    figure = _figure(result, "conditions")
    titles = _titles(figure)
    assert len(titles) == 4
    assert sum(title.startswith("Condition I:") for title in titles) == 2
    assert sum(title.startswith("Condition II:") for title in titles) == 2
    matched = result["pairs"]["matched"]
    condition_two = next(
        axes
        for axes in figure.axes
        if axes.get_title() == "Condition II: commutativity\nweight matching (B permuted onto A)"
    )
    labels = [text.get_text() for text in condition_two.get_legend().get_texts()]
    assert labels[1:] == ["factor d(W_A, W_B)", "factor d(H_A, H_B)"]
    layers = len(matched["commutativity_layers"])
    weight_bars = condition_two.patches[layers : 2 * layers]
    assert [bar.get_height() for bar in weight_bars] == pytest.approx(
        matched["commutativity_factors"]["weights"]
    )


def test_the_first_layer_commutativity_of_an_mlp_is_labelled_zero(result: dict[str, Any]) -> None:
    # A and B see the same input x, so H_A = H_B there and Condition II holds exactly.
    assert result["pairs"]["naive"]["commutativity"][0] == 0.0
    assert "0" in _texts(_figure(result, "conditions"))


def test_a_result_without_matched_pair_renders_naive_only(naive_only: dict[str, Any]) -> None:
    for name in PLOT_NAMES:
        assert _png(naive_only, name).startswith(PNG_SIGNATURE)
        figure = _figure(naive_only, name)
        legends = [
            text.get_text()
            for axes in figure.axes
            if axes.get_legend()
            for text in axes.get_legend().get_texts()
        ]
        assert not any("matching" in text for text in _titles(figure) + legends)
    assert _titles(_figure(naive_only, "llfc")) == ["naive (B as uploaded)"]
    assert len(_figure(naive_only, "conditions").axes) == 2
    assert len(_figure(naive_only, "lmc").axes[0].get_lines()) == 2


def test_missing_values_render_and_are_labelled_not_available(result: dict[str, Any]) -> None:
    # Stored results carry null for non-finite numbers (JSON has no NaN).
    damaged = copy.deepcopy(result)
    damaged["pairs"]["naive"]["llfc"]["cos_alpha"]["0.5"][0] = None
    damaged["pairs"]["naive"]["lmc"]["loss"][3] = None
    assert _png(damaged, "llfc").startswith(PNG_SIGNATURE)
    assert _png(damaged, "lmc").startswith(PNG_SIGNATURE)
    assert "n/a" in _texts(_figure(damaged, "llfc"))


def test_values_spanning_orders_of_magnitude_use_a_log_axis(result: dict[str, Any]) -> None:
    spread = copy.deepcopy(result)
    for pair in spread["pairs"].values():
        count = len(pair["llfc"]["layers"])
        pair["llfc"]["cos_ab"] = [0.5] * count
        pair["llfc"]["cos_alpha"] = {key: [0.001] * count for key in pair["llfc"]["cos_alpha"]}
    assert _figure(spread, "llfc").axes[0].get_yscale() == "log"
    close = copy.deepcopy(spread)
    for pair in close["pairs"].values():
        count = len(pair["llfc"]["layers"])
        pair["llfc"]["cos_alpha"] = {key: [0.2] * count for key in pair["llfc"]["cos_alpha"]}
    assert _figure(close, "llfc").axes[0].get_yscale() == "linear"


# --- The route, over real HTTP against the embedded service (auth on). ----------------------


@pytest.fixture(scope="module")
def analyze_job(alice: httpx.Client) -> dict[str, Any]:
    """Alice's succeeded analyze job (weight matching) of two modes her train job produced."""
    train = run_job(
        alice,
        {
            "kind": "train",
            "dataset": "builtin:digits",
            "params": {"arch": mlp_arch([64, 32, 32, 10]), "epochs": 2, "seed": 3},
        },
    )
    model_a, model_b = (artifact["checkpoint_id"] for artifact in train["artifacts"])
    analyze = run_job(
        alice,
        {
            "kind": "analyze",
            "model_a": model_a,
            "model_b": model_b,
            "dataset": "builtin:digits",
            "params": {"match": "weight", "split": "test", "max_examples": 200},
        },
    )
    return {"train": train, "analyze": analyze}


@pytest.mark.slow
@pytest.mark.parametrize("name", PLOT_NAMES)
def test_the_route_serves_each_plot_of_a_succeeded_analyze_job_as_png(
    alice: httpx.Client, analyze_job: dict[str, Any], name: str
) -> None:
    job = analyze_job["analyze"]
    response = alice.get(f"/v1/jobs/{job['id']}/plots/{name}.png")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "private, max-age=86400"
    # Rendering is deterministic, so the bytes are those of the job's stored result.
    assert response.content == _png(job["result"], name)


@pytest.mark.slow
def test_another_owner_gets_404_for_a_plot(bob: httpx.Client, analyze_job: dict[str, Any]) -> None:
    response = bob.get(f"/v1/jobs/{analyze_job['analyze']['id']}/plots/lmc.png")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.slow
def test_an_unknown_plot_is_404_with_a_sentence_listing_the_plots(
    alice: httpx.Client, analyze_job: dict[str, Any]
) -> None:
    response = alice.get(f"/v1/jobs/{analyze_job['analyze']['id']}/plots/barriers.png")
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "'barriers'" in detail
    assert "lmc, llfc, conditions" in detail


@pytest.mark.slow
def test_a_train_job_has_no_plots(alice: httpx.Client, analyze_job: dict[str, Any]) -> None:
    response = alice.get(f"/v1/jobs/{analyze_job['train']['id']}/plots/lmc.png")
    assert response.status_code == 404
    assert "only analyze and sweep jobs have plots" in response.json()["detail"]


@pytest.mark.slow
def test_an_analyze_job_that_has_not_succeeded_answers_409(alice: httpx.Client) -> None:
    model_a = upload_mlp(alice, LONG_ANALYZE_WIDTHS, seed=21)
    model_b = upload_mlp(alice, LONG_ANALYZE_WIDTHS, seed=22)
    submitted = submit(alice, long_analyze_body(model_a, model_b))
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    try:
        unfinished = alice.get(f"/v1/jobs/{job_id}/plots/llfc.png")
        assert unfinished.status_code == 409
        assert unfinished.json()["detail"].startswith(f"Job {job_id} is ")
        assert "once it has succeeded" in unfinished.json()["detail"]
    finally:
        alice.post(f"/v1/jobs/{job_id}/cancel")
    assert wait_for_job(alice, job_id)["status"] == "cancelled"
    cancelled = alice.get(f"/v1/jobs/{job_id}/plots/llfc.png")
    assert cancelled.status_code == 409
    assert cancelled.json()["detail"] == (
        f"Job {job_id} is cancelled; its plots exist once it has succeeded."
    )


@pytest.mark.slow
def test_the_openapi_document_gives_the_plot_route_a_png_response(
    anonymous: httpx.Client,
) -> None:
    paths = anonymous.get("/openapi.json").json()["paths"]
    operation = paths["/v1/jobs/{job_id}/plots/{name}.png"]["get"]
    assert list(operation["responses"]["200"]["content"]) == ["image/png"]
    assert operation["responses"]["200"]["content"]["image/png"]["schema"] == {
        "type": "string",
        "format": "binary",
    }
    assert {"404", "409"} <= set(operation["responses"])
