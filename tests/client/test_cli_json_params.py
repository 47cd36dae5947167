"""`llfc submit`'s --params and --param values are JSON read on the user's machine: nesting past
the recursion limit or an integer past Python's digit limit is a usage error with a sentence,
never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from llfc_client.cli.commands import build_params

TOO_DEEP = "[" * 20_000 + "]" * 20_000
TOO_LONG = "9" * 5_000


@pytest.mark.parametrize("value", [TOO_DEEP, TOO_LONG], ids=["deep", "5000-digits"])
def test_a_param_value_too_deep_or_too_long_is_a_usage_error(value: str) -> None:
    with pytest.raises(click.BadParameter, match="'arch' is JSON too deep or too long"):
        build_params("train", None, [f"arch={value}"], None)


@pytest.mark.parametrize("value", [TOO_DEEP, TOO_LONG], ids=["deep", "5000-digits"])
def test_params_json_too_deep_or_too_long_is_a_usage_error(value: str) -> None:
    with pytest.raises(click.BadParameter, match="is JSON too deep or too long to read"):
        build_params("train", f'{{"arch": {value}}}', [], None)


def test_a_param_value_can_be_read_from_a_json_file(tmp_path: Path) -> None:
    arch = {"name": "transformers", "model": "gpt2", "config": {"n_layer": 2}}
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    params = build_params("train", None, [f"arch=@{tmp_path / 'arch.json'}", "epochs=3"], None)
    assert params["arch"] == arch and params["epochs"] == 3
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(click.BadParameter, match="The value of 'arch' is not valid JSON"):
        build_params("train", None, [f"arch=@{tmp_path / 'broken.json'}"], None)
