"""`llfc results --format table` of an analysis given a list of repairs: each repair's barriers
per pair, and each pair's variance collapse per repair site and LLFC alpha."""

from __future__ import annotations

import pytest
import torch

from llfc_client.cli.tables import analysis_table, format_number, format_percent
from llfc_core.analysis import AnalysisConfig, AnalysisResult, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.data import digits
from llfc_core.training import TrainConfig, train_modes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def repaired_result() -> AnalysisResult:
    arch = parse_arch({"name": "mlp", "widths": [64, 32, 32, 10]})
    state_a, state_b = train_modes(arch, digits("train"), TrainConfig(epochs=2), device=CPU)
    config = AnalysisConfig(
        match="weight", alphas=[0, 0.5, 1], llfc_alphas=[0.25, 0.5], repair=["none", "repair"]
    )
    return analyze_pair(
        arch,
        state_a,
        state_b,
        digits("test").limit(200),
        config,
        train_dataset=digits("train"),
        device=CPU,
    )


def _block(table: str, title: str) -> list[list[str]]:
    """The block of ``table`` whose first line starts with ``title``, as rows of cells split on
    two or more spaces (labels hold single spaces)."""
    [block] = [b for b in table.split("\n\n") if b.startswith(title)]
    return [[cell for cell in line.split("  ") if cell] for line in block.splitlines()]


def test_the_table_shows_each_repairs_barriers_per_pair(repaired_result: AnalysisResult) -> None:
    rows = _block(analysis_table(repaired_result), "Barriers by repair")
    assert [cell.strip() for cell in rows[0]] == ["Barriers by repair", "naive", "weight-matched"]
    shown = {row[0].strip(): [cell.strip() for cell in row[1:]] for row in rows[1:]}
    pairs = repaired_result.pairs
    for mode in ("none", "repair"):
        assert shown[f"loss barrier, {mode}"] == [
            format_number(pairs[p].repairs[mode].loss_barrier)  # type: ignore[index]
            for p in ("naive", "matched")
        ]
        assert shown[f"error barrier, {mode}"] == [
            format_percent(pairs[p].repairs[mode].error_barrier)  # type: ignore[index]
            for p in ("naive", "matched")
        ]
    assert len(shown) == 4


def test_the_table_shows_each_pairs_variance_ratio_per_site(
    repaired_result: AnalysisResult,
) -> None:
    table = analysis_table(repaired_result)
    for pair_name in ("naive", "matched"):
        ratio = repaired_result.pairs[pair_name].variance_ratio
        assert ratio is not None
        rows = _block(table, f"Variance collapse, {repaired_result.pair_label(pair_name)}:")
        assert [cell.strip() for cell in rows[1]] == ["site", "α=0.25", "α=0.5"]
        shown = {row[0].strip(): [cell.strip() for cell in row[1:]] for row in rows[2:]}
        assert shown == {
            layer: [format_number(ratio.ratio[alpha][index]) for alpha in ("0.25", "0.5")]
            for index, layer in enumerate(ratio.layers)
        }
        assert list(shown) == ["0", "2"]


def test_a_result_without_repairs_has_no_repair_blocks() -> None:
    arch = parse_arch({"name": "mlp", "widths": [64, 16, 10]})
    torch.manual_seed(0)
    state_a, state_b = arch.build().state_dict(), arch.build().state_dict()
    result = analyze_pair(arch, state_a, state_b, digits("test").limit(50), device=CPU)
    table = analysis_table(result)
    assert "Barriers by repair" not in table and "Variance collapse" not in table
