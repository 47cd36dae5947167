"""JSON from clients, parsed within bounds: every JSON body and JSON form field goes through here.

Python's own parser has three ways to fail that a client can trigger on purpose: nesting deeper
than the interpreter's recursion limit (RecursionError), integers longer than
``sys.int_max_str_digits`` (ValueError), and the non-standard constants NaN and Infinity, which
it accepts and which then reach the engine or the database. :func:`parse_json` refuses all three
with :class:`JsonInputError` before they can, and :func:`check_depth` bounds an object that was
parsed elsewhere (a model built in Python, a value from the OpenAPI fuzzer).
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted; the deepest real input (a job's params
holding an arch) nests 4 levels."""
MAX_INTEGER_DIGITS = 100
"""Longest integer accepted; every count, width and seed of this service has at most 10 digits,
so a longer one is refused with a sentence instead of a range error from far inside."""

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_A_BRACKET = bytes(byte for byte in range(256) if byte not in b"[]{}")
_NESTING_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JsonInputError(ValueError):
    """Text that is not JSON, or JSON beyond the bounds above; the message is a clause that the
    caller puts after its subject, e.g. "The request body " + 'is nested 40 levels deep...'."""


def parse_json(text: str | bytes) -> Any:
    """``text`` parsed as JSON, refusing deep nesting, huge integers and NaN/Infinity.

    The depth is measured on the raw text before parsing (brackets outside strings), so a
    nesting that would exhaust the recursion limit never reaches the recursive parser.
    """
    raw = text.encode() if isinstance(text, str) else text
    depth = _nesting_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise JsonInputError(
            f"is nested {depth:,} levels deep; at most {MAX_JSON_DEPTH} levels are allowed"
        )
    try:
        return json.loads(
            raw,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_refuse_constant,
        )
    except JsonInputError:
        raise
    except json.JSONDecodeError as error:
        raise JsonInputError(f"is not valid JSON ({error.msg} at character {error.pos})") from error
    except (RecursionError, ValueError) as error:
        # The depth check above keeps both away; this is the last line, not the plan.
        raise JsonInputError(f"is not JSON this service can read ({error})") from error


def check_depth(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`JsonInputError` if ``value`` nests lists and dicts deeper than
    ``max_depth``; walked with an explicit stack, so any depth is measured without recursing."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth + 1 > max_depth:
            raise JsonInputError(f"is nested more than {max_depth} levels deep")
        stack.extend((child, depth + 1) for child in children)


def _nesting_depth(raw: bytes) -> int:
    """The deepest bracket nesting of ``raw``, brackets inside strings not counted.

    Unbalanced text is left for the parser to report; only the depth matters here.
    """
    brackets = _STRING.sub(b'""', raw).translate(None, delete=_NOT_A_BRACKET)
    if not brackets:
        return 0
    return max(accumulate(_NESTING_STEP[byte] for byte in brackets))


def _bounded_int(digits: str) -> int:
    length = len(digits.lstrip("-"))
    if length > MAX_INTEGER_DIGITS:
        raise JsonInputError(
            f"holds an integer of {length:,} digits; "
            f"at most {MAX_INTEGER_DIGITS} digits are allowed"
        )
    return int(digits)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonInputError(f"holds the number {text[:40]}, which is too large for a float")
    return value


def _refuse_constant(name: str) -> Any:
    raise JsonInputError(f"holds {name}, which is not a JSON number")
