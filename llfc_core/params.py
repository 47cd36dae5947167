"""The engine's parameter limits and the one integer check, shared by every layer that validates.

The service refuses a job at submission with the same limits and sentences the engine would give
at run time, by importing them from here rather than restating them.
"""

from __future__ import annotations

from llfc_core.errors import InvalidParameterError, LLFCError

MAX_BATCH_SIZE = 65_536
"""Examples per forward pass; more only costs memory without speeding anything up."""
DEFAULT_BATCH_SIZE = 256
"""Batch size of analysis, matching and interpolation when the caller gives none."""
MAX_SEED = 2**31 - 1
"""The largest seed: torch and numpy both accept every seed from 0 to this one."""
MATCH_METHODS = ("weight", "activation", "commutativity", "ste")
"""How B can be permuted onto A (see :func:`llfc_core.matching.match_models`)."""
MERGE_METHODS = ("weight_average", "feature_average")
"""How N models become one (see :func:`llfc_core.merging.merge_many`)."""
DATA_MATCH_METHODS = ("activation", "commutativity", "ste")
"""The matching methods that need data: features to compare, or a loss to train on."""
MAX_STE_EPOCHS = 1000
"""Passes of STE matching over its training data (as a train job's epochs)."""
MAX_STE_LR = 1.0
"""The largest learning rate of STE's proxy weights (Adam: steps of about this size)."""
MATCH_SYMMETRIES = ("permutation", "orthogonal")
"""Which maps of B's units a match may use: permutations only, or orthogonal maps within
attention heads (see :mod:`llfc_core.matching.orthogonal`)."""
REPAIR_MODES = ("none", "reset", "repair")
"""What is done to an interpolated network before it is measured or stored: nothing, its
BatchNorm statistics re-estimated, or REPAIR (see :mod:`llfc_core.repair`)."""


def check_int(
    value: object,
    low: int,
    high: int,
    described: str,
    error: type[LLFCError] = InvalidParameterError,
    *,
    grouped: bool = False,
) -> int:
    """``value`` if it is an integer in ``[low, high]``, else ``error`` saying so.

    ``described`` starts the sentence, e.g. "The parameter 'seed'"; ``grouped`` writes the bounds
    with thousands separators (1,000,000). Booleans are refused even though Python counts them as
    integers: ``true`` in a JSON body is never meant as 1.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        bounds = f"{low:,} to {high:,}" if grouped else f"{low} to {high}"
        raise error(f"{described} must be an integer from {bounds}, got {value!r}.")
    return value


MAX_NAMES_IN_MESSAGE = 20
MAX_NAME_CHARACTERS = 60


def named(names: list[str]) -> str:
    """Names for a sentence, quoted: at most 20 of them, each cut to 60 characters, then how many
    more. A body of ten thousand unknown keys must not make a megabyte of error message."""
    shown = [
        repr(name if len(name) <= MAX_NAME_CHARACTERS else name[:MAX_NAME_CHARACTERS] + "...")
        for name in names[:MAX_NAMES_IN_MESSAGE]
    ]
    rest = len(names) - len(shown)
    return ", ".join(shown) + (f" and {rest:,} more" if rest else "")
