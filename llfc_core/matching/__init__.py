"""Permuting B onto A: weight matching and activation matching behind one entry point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset, fit_to_arch
from llfc_core.device import resolve_device
from llfc_core.errors import InvalidParameterError
from llfc_core.matching.activation import activation_matching
from llfc_core.matching.weight import weight_matching, weight_objective
from llfc_core.models import load_model
from llfc_core.pair import check_same_layout
from llfc_core.params import DEFAULT_BATCH_SIZE, MATCH_METHODS
from llfc_core.permutation import (
    StateDict,
    apply_permutation,
    identity_permutation,
    permutation_to_lists,
)
from llfc_core.progress import Reporter


@dataclass(frozen=True)
class MatchResult:
    """A permutation of B onto A, how much it reduced the method's objective, and B permuted.

    ``objective_*`` is the method's own objective: the summed squared weight distance for weight
    matching, the mean per-example summed squared feature distance for activation matching.
    ``weight_distance_*`` is always the weight objective, so the two methods can be compared.
    """

    method: str
    permutation: dict[str, list[int]]
    objective_before: float
    objective_after: float
    weight_distance_before: float
    weight_distance_after: float
    iterations: int
    permuted_b: StateDict

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (the permutation included, the tensors not)."""
        return {
            "method": self.method,
            "permutation": self.permutation,
            "objective_before": self.objective_before,
            "objective_after": self.objective_after,
            "weight_distance_before": self.weight_distance_before,
            "weight_distance_after": self.weight_distance_after,
            "iterations": self.iterations,
        }


def match_models(
    arch: Architecture,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    method: str,
    dataset: Dataset | None = None,
    *,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_iter: int = 100,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
) -> MatchResult:
    """Permute B's hidden units onto A's with ``method`` ('weight' or 'activation').

    Activation matching needs ``dataset``; weight matching ignores it. The returned ``permuted_b``
    computes exactly the same function as B.
    """
    if method not in MATCH_METHODS:
        raise InvalidParameterError(
            f"The matching method must be one of {', '.join(MATCH_METHODS)}, got {method!r}."
        )
    check_same_layout(state_a, state_b)
    device = device or resolve_device("auto")
    spec = arch.permutation_spec()
    state_a = {key: value.to(device) for key, value in state_a.items()}
    state_b = {key: value.to(device) for key, value in state_b.items()}
    if method == "weight":
        perm, iterations = weight_matching(
            spec, state_a, state_b, seed=seed, max_iter=max_iter, reporter=reporter
        )
        objective_before = weight_objective(
            spec, identity_permutation(spec, state_a), state_a, state_b
        )
        objective_after = weight_objective(spec, perm, state_a, state_b)
    else:
        if dataset is None:
            raise InvalidParameterError(
                "Activation matching needs a dataset to compute features on."
            )
        dataset = fit_to_arch(arch, dataset)
        perm, objective_before, objective_after = activation_matching(
            spec,
            load_model(arch, state_a, device),
            load_model(arch, state_b, device),
            dataset,
            batch_size=batch_size,
            device=device,
            reporter=reporter,
        )
        iterations = 1
    permuted_b = apply_permutation(spec, perm, state_b)
    return MatchResult(
        method=method,
        permutation=permutation_to_lists(perm),
        objective_before=objective_before,
        objective_after=objective_after,
        weight_distance_before=weight_objective(
            spec, identity_permutation(spec, state_a), state_a, state_b
        ),
        weight_distance_after=weight_objective(spec, perm, state_a, state_b),
        iterations=iterations,
        permuted_b={key: value.cpu() for key, value in permuted_b.items()},
    )
