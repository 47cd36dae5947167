"""`llfc results --format table|csv` of an analysis: the endpoints as the barriers measure them
and, for a BatchNorm pair whose statistics were re-estimated, as uploaded, each labelled."""

from __future__ import annotations

import pytest
import torch
from support.batch_norm import trained_resnet_pair, with_wrong_running_statistics

from llfc_client.cli.tables import (
    analysis_table,
    format_number,
    format_percent,
)
from llfc_core.analysis import AnalysisResult, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.data import digits
from llfc_core.training import TrainConfig, train_modes
from llfc_results import analysis_csv_rows

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def batch_norm_result() -> AnalysisResult:
    """A ResNet-8 pair analysed on digits, A uploaded with wrong running statistics."""
    arch, state_a, state_b = trained_resnet_pair()
    uploaded_a = with_wrong_running_statistics(state_a)
    return analyze_pair(arch, uploaded_a, state_b, digits("test").limit(300), device=CPU)


@pytest.fixture(scope="module")
def mlp_result() -> AnalysisResult:
    arch = parse_arch({"name": "mlp", "widths": [64, 32, 10]})
    state_a, state_b = train_modes(arch, digits("train"), TrainConfig(epochs=1), device=CPU)
    return analyze_pair(arch, state_a, state_b, digits("test").limit(300), device=CPU)


def _endpoint_lines(table: str) -> dict[str, list[str]]:
    """The endpoints block of an analysis table: its first line's cells, then each row's label
    and cells (labels hold spaces; cells do not)."""
    block = table.split("\n\n")[0].splitlines()
    header = block[0].split()
    rows: dict[str, list[str]] = {"header": header}
    for line in block[1:]:
        *label, cell_a, cell_b = line.split()
        rows[" ".join(label)] = [cell_a, cell_b]
    return rows


def test_the_table_shows_a_batch_norm_pair_re_estimated_and_as_uploaded(
    batch_norm_result: AnalysisResult,
) -> None:
    endpoints = batch_norm_result.to_json()["endpoints"]
    uploaded_a, uploaded_b = endpoints["a"]["as_uploaded"], endpoints["b"]["as_uploaded"]
    assert uploaded_a["error"] > endpoints["a"]["error"] + 0.3

    rows = _endpoint_lines(analysis_table(batch_norm_result))

    assert rows["header"] == ["Endpoints", "A", "B"]
    assert rows["loss, BatchNorm re-estimated"] == [
        format_number(endpoints["a"]["loss"]),
        format_number(endpoints["b"]["loss"]),
    ]
    assert rows["error, BatchNorm re-estimated"] == [
        format_percent(endpoints["a"]["error"]),
        format_percent(endpoints["b"]["error"]),
    ]
    assert rows["loss as uploaded"] == [
        format_number(uploaded_a["loss"]),
        format_number(uploaded_b["loss"]),
    ]
    assert rows["error as uploaded"] == [
        format_percent(uploaded_a["error"]),
        format_percent(uploaded_b["error"]),
    ]


def test_the_csv_rows_label_the_endpoints_as_uploaded(batch_norm_result: AnalysisResult) -> None:
    endpoints = batch_norm_result.to_json()["endpoints"]
    rows = {
        (metric, side): value
        for pair, metric, side, _, value in analysis_csv_rows(batch_norm_result)
        if pair == "endpoints"
    }
    for side in ("a", "b"):
        assert rows["loss", side] == endpoints[side]["loss"]
        assert rows["error", side] == endpoints[side]["error"]
        assert rows["loss_as_uploaded", side] == endpoints[side]["as_uploaded"]["loss"]
        assert rows["error_as_uploaded", side] == endpoints[side]["as_uploaded"]["error"]
        assert rows["batch_norm_reestimated", side] is True
    assert len(rows) == 10


def test_the_table_of_a_batch_norm_free_pair_says_its_numbers_are_as_uploaded(
    mlp_result: AnalysisResult,
) -> None:
    endpoints = mlp_result.to_json()["endpoints"]
    rows = _endpoint_lines(analysis_table(mlp_result))
    assert rows == {
        "header": ["Endpoints,", "as", "uploaded", "A", "B"],
        "loss": [format_number(endpoints["a"]["loss"]), format_number(endpoints["b"]["loss"])],
        "error": [
            format_percent(endpoints["a"]["error"]),
            format_percent(endpoints["b"]["error"]),
        ],
    }
