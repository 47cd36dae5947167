"""Work that depends on one model alone, done once however many pairs the model is in."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import torch

T = TypeVar("T")


class PerModel:
    """Results about single models (an endpoint built with its BatchNorm statistics
    re-estimated, its loss as uploaded), kept for the ``shared`` state dicts only.

    A sweep shares its N models' state dicts, so each of their results is computed for the
    first pair it is in and read back by every other; a state dict made for one pair (B
    permuted onto A) is not shared, so nothing about it outlives its pair. Results are keyed by
    the state dict's identity: one PerModel serves one arch, one dataset and one config.
    """

    def __init__(self, shared: Sequence[Mapping[str, torch.Tensor]] = ()) -> None:
        # Holding the state dicts keeps their ids from being reused by other objects.
        self._shared = {id(state): state for state in shared}
        self._results: dict[tuple[str, int], Any] = {}

    def get(self, what: str, state: Mapping[str, torch.Tensor], compute: Callable[[], T]) -> T:
        """``compute()``, or the result it gave for ``what`` of this shared state before."""
        if id(state) not in self._shared:
            return compute()
        key = (what, id(state))
        if key not in self._results:
            self._results[key] = compute()
        return cast(T, self._results[key])
