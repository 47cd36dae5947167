"""The bounded JSON parser every JSON body and form field goes through, and the depth check of
objects parsed elsewhere: each hostile shape is a JsonInputError with a clause, never a
RecursionError or a ValueError from deep inside."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from service.jobs import request_hash
from service.json_input import (
    MAX_INTEGER_DIGITS,
    MAX_JSON_DEPTH,
    JsonInputError,
    check_depth,
    parse_json,
)
from service.schemas import JobCreate


def _nested_dict(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth - 1):
        node["a"] = {}
        node = node["a"]
    return root


def test_ordinary_json_parses_as_the_standard_parser_would() -> None:
    text = '{"name": "mlp", "widths": [64, 16, 10], "lr": 0.05, "note": "[[{{ not brackets"}'
    assert parse_json(text) == {
        "name": "mlp",
        "widths": [64, 16, 10],
        "lr": 0.05,
        "note": "[[{{ not brackets",
    }
    assert parse_json(b'"\\"[["') == '"[['


def test_nesting_at_the_limit_parses_and_one_deeper_is_refused_before_parsing() -> None:
    assert parse_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(JsonInputError, match=r"is nested 33 levels deep; at most 32"):
        parse_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
    with pytest.raises(JsonInputError, match=r"nested 100,000 levels deep"):
        parse_json('{"a": ' * 100_000 + "1" + "}" * 100_000)


@pytest.mark.parametrize(
    ("text", "clause"),
    [
        ("[" + "9" * (MAX_INTEGER_DIGITS + 1) + "]", "holds an integer of 101 digits"),
        ("-" + "9" * 5000, "holds an integer of 5,000 digits"),
        ("[NaN]", "holds NaN, which is not a JSON number"),
        ('{"x": -Infinity}', "holds -Infinity"),
        ("1e999", "holds the number 1e999, which is too large for a float"),
        ("{'a': 1}", "is not valid JSON (Expecting property name"),
    ],
)
def test_hostile_values_are_refused_with_a_clause(text: str, clause: str) -> None:
    with pytest.raises(JsonInputError) as refused:
        parse_json(text)
    assert str(refused.value).startswith(clause)


def test_the_longest_allowed_integer_parses() -> None:
    assert parse_json("9" * MAX_INTEGER_DIGITS) == int("9" * MAX_INTEGER_DIGITS)


def test_check_depth_measures_any_depth_without_recursing() -> None:
    check_depth(_nested_dict(MAX_JSON_DEPTH))
    with pytest.raises(JsonInputError, match="is nested more than 32 levels deep"):
        check_depth(_nested_dict(MAX_JSON_DEPTH + 1))
    with pytest.raises(JsonInputError):
        check_depth(_nested_dict(50_000))


def test_job_params_built_in_python_are_bounded_before_the_idempotency_hash() -> None:
    # 900 levels used to reach json.dumps in request_hash and fail there with a 500.
    with pytest.raises(ValidationError, match="params\\n  it is nested more than 31 levels"):
        JobCreate.model_validate({"kind": "train", "params": _nested_dict(900)})
    shallow = JobCreate.model_validate({"kind": "train", "params": _nested_dict(31)})
    assert len(request_hash(shallow)) == 64
