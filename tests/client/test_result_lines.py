"""`llfc results` of a job without its own table (match, interpolate, train, merge): nested
JSON as readable lines, long lists summarised by their length wherever they are nested."""

from __future__ import annotations

from llfc_client.cli.tables import key_value_lines


def test_a_merges_permutations_read_as_lengths_not_as_every_index() -> None:
    indices = list(range(128))[::-1]
    result = {
        "method": "feature_average",
        "permutations": [{"P_0": indices, "P_2": indices[:4]}, {"P_0": indices, "P_2": [0]}],
        "unfitted_layers": {},
    }

    lines = list(key_value_lines(result))

    assert lines == [
        "method: feature_average",
        "permutations: [{P_0: [128 values], P_2: [127, 126, 125, 124]}, "
        "{P_0: [128 values], P_2: [0]}]",
        "unfitted_layers: {}",
    ]
