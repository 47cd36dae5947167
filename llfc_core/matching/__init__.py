"""Permuting B onto A: weight, activation, commutativity and STE matching behind one entry
point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset, fit_to_arch
from llfc_core.device import resolve_device
from llfc_core.errors import InvalidParameterError, SymmetryProofError
from llfc_core.matching.activation import activation_matching
from llfc_core.matching.commutativity import commutativity_matching
from llfc_core.matching.orthogonal import align_heads_orthogonally, check_symmetry
from llfc_core.matching.ste import SteConfig, ste_matching
from llfc_core.matching.weight import weight_distance, weight_matching
from llfc_core.models import load_model
from llfc_core.pair import check_same_layout
from llfc_core.params import DEFAULT_BATCH_SIZE, MATCH_METHODS
from llfc_core.permutation import (
    StateDict,
    apply_permutation,
    permutation_to_lists,
)
from llfc_core.placement import place_dataset
from llfc_core.progress import Reporter
from llfc_core.symmetry.proof import PROOF_TOLERANCE, check_proof, relative_change
from llfc_core.symmetry.report import proof_json, symmetry_summary

FUNCTION_CHECK_EXAMPLES = 64


@dataclass(frozen=True)
class MatchResult:
    """A permutation of B onto A, how much it reduced the method's objective, and B permuted.

    ``objective_*`` is the method's own objective: the summed squared weight distance for weight
    matching, the mean per-example summed squared feature distance for activation matching, the
    poster's Eq. (2) summed over layers per example for commutativity matching, the midpoint's
    loss on its evaluation examples for STE (before: B unpermuted).
    ``weight_distance_*`` is always the weight objective, so the two methods can be compared;
    with ``symmetry_group`` 'orthogonal', ``weight_distance_after`` is that of B with its
    attention heads rotated too, ``weight_distance_permuted`` that of the permutation alone.
    """

    method: str
    symmetry_group: str
    """'permutation', or 'orthogonal': heads also rotated (:mod:`llfc_core.matching.orthogonal`)."""
    permutation: dict[str, list[int]]
    objective_before: float
    objective_after: float
    weight_distance_before: float
    weight_distance_after: float
    iterations: int
    weight_distance_permuted: float
    unobserved: list[str]
    """Permutations activation matching saw no feature of, left as the identity (for
    commutativity matching: that no modelled layer touches, left as weight matching chose)."""
    permuted_b: StateDict
    function_check: dict[str, Any]
    """How much permuted B's outputs differ from B's on a batch (:func:`check_function`)."""
    symmetry: dict[str, Any]
    """The spec's summary (:func:`llfc_core.symmetry.report.symmetry_summary`)."""

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (the permutation included, the tensors not)."""
        return {
            "method": self.method,
            "symmetry_group": self.symmetry_group,
            "permutation": self.permutation,
            "objective_before": self.objective_before,
            "objective_after": self.objective_after,
            "weight_distance_before": self.weight_distance_before,
            "weight_distance_after": self.weight_distance_after,
            "iterations": self.iterations,
            "weight_distance_permuted": self.weight_distance_permuted,
            "unobserved": self.unobserved,
            "function_check": self.function_check,
            "symmetry": self.symmetry,
        }


def check_function(
    arch: Architecture,
    state_b: Mapping[str, torch.Tensor],
    permuted_b: Mapping[str, torch.Tensor],
    dataset: Dataset | None,
    *,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Prove that permuted B computes B's function: their outputs on the first batch of the
    job's data (random inputs when the job has none) must agree to the proof's tolerance. A
    failure is a :class:`~llfc_core.errors.SymmetryProofError` naming the permutation that
    broke the function, never a silently wrong result."""
    if dataset is not None and dataset.num_examples > 0:
        inputs, _ = next(iter(fit_to_arch(arch, dataset).batches(FUNCTION_CHECK_EXAMPLES)))
        source = "data"
    else:
        generator = torch.Generator().manual_seed(seed)
        inputs = arch.random_inputs(FUNCTION_CHECK_EXAMPLES, generator)
        source = "random"
    inputs = inputs.to(device)
    model_b = load_model(arch, state_b, device)
    with torch.inference_mode():
        reference = model_b(inputs).float()
        permuted = load_model(arch, permuted_b, device)(inputs).float()
    change = relative_change(reference, permuted)
    if change > PROOF_TOLERANCE:
        # Name the permutation at fault: the spec's proof on B's own weights and these inputs.
        check_proof(model_b, arch.permutation_spec(), inputs, seed=seed)
        raise SymmetryProofError(
            f"Permuted B does not compute B's function: its outputs differ by {change:.2e} of "
            f"their scale (tolerance {PROOF_TOLERANCE:.0e}). This is a bug in the spec "
            "derivation: please report the arch."
        )
    return proof_json(change, int(inputs.shape[0]), source)


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
    symmetry: str = "permutation",
    ste: SteConfig | None = None,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
) -> MatchResult:
    """Permute B's hidden units onto A's with ``method``: 'weight', 'activation',
    'commutativity' (:mod:`~llfc_core.matching.commutativity`, from weight matching's solution)
    or 'ste' (:mod:`~llfc_core.matching.ste`, with ``ste``'s epochs and learning rate).

    Every method but weight matching needs ``dataset`` (features, or a loss to train on); weight
    matching uses it only to check, on its first batch, that the returned ``permuted_b``
    computes exactly the same function as B. With ``symmetry`` 'orthogonal', the heads of B
    matched by any method are then rotated onto A's by weight Procrustes
    (:func:`~llfc_core.matching.orthogonal.align_heads_orthogonally`).
    """
    if method not in MATCH_METHODS:
        raise InvalidParameterError(
            f"The matching method must be one of {', '.join(MATCH_METHODS)}, got {method!r}."
        )
    if ste is not None and method != "ste":
        raise InvalidParameterError(
            f"'epochs' and 'lr' are STE matching's parameters; method {method!r} takes neither."
        )
    check_same_layout(state_a, state_b)
    device = device or resolve_device("auto")
    spec = arch.permutation_spec()
    check_symmetry(arch.symmetry(), symmetry)
    unobserved: list[str] = []
    state_a = {key: value.to(device) for key, value in state_a.items()}
    state_b = {key: value.to(device) for key, value in state_b.items()}
    if method != "weight":
        if dataset is None or dataset.num_examples == 0:
            raise InvalidParameterError(
                f"{method.capitalize()} matching needs a dataset with examples to "
                + ("train on." if method == "ste" else "compute features on.")
            )
        dataset = place_dataset(fit_to_arch(arch, dataset), device)
    weight_reporter = reporter if method == "weight" else None
    if method in ("weight", "commutativity"):
        perm, iterations = weight_matching(
            spec, state_a, state_b, seed=seed, max_iter=max_iter, reporter=weight_reporter
        )
    if method == "activation":
        assert dataset is not None
        perm, objective_before, objective_after, unobserved = activation_matching(
            spec,
            load_model(arch, state_a, device),
            load_model(arch, state_b, device),
            dataset,
            batch_size=batch_size,
            device=device,
            reporter=reporter,
        )
        iterations = 1
    elif method == "commutativity":
        assert dataset is not None
        descent = commutativity_matching(
            spec,
            load_model(arch, state_a, device),
            load_model(arch, state_b, device),
            dataset,
            perm,
            batch_size=batch_size,
            device=device,
            seed=seed,
            max_iter=max_iter,
            reporter=reporter,
        )
        perm, iterations, unobserved = descent.permutation, descent.sweeps, descent.unobserved
        objective_before = descent.objective_identity
        objective_after = descent.objective_history[-1]
    elif method == "ste":
        assert dataset is not None
        trained = ste_matching(
            arch,
            spec,
            state_a,
            state_b,
            dataset,
            ste or SteConfig(),
            batch_size=batch_size,
            seed=seed,
            device=device,
            reporter=reporter,
        )
        perm, iterations = trained.permutation, trained.steps
        objective_before, objective_after = trained.loss_identity, trained.loss_best
    permuted_b = apply_permutation(spec, perm, state_b)
    # The weight objective of a permutation is the distance to B permuted by it, which is at
    # hand: each distance is one pass over the weights.
    weight_distance_before = weight_distance(spec, state_a, state_b)
    weight_distance_permuted = weight_distance(spec, state_a, permuted_b)
    weight_distance_after = weight_distance_permuted
    if symmetry == "orthogonal":
        permuted_b = align_heads_orthogonally(spec, state_a, permuted_b)
        weight_distance_after = weight_distance(spec, state_a, permuted_b)
    if method == "weight":
        objective_before, objective_after = weight_distance_before, weight_distance_after
    function_check = check_function(arch, state_b, permuted_b, dataset, seed=seed, device=device)
    return MatchResult(
        method=method,
        symmetry_group=symmetry,
        permutation=permutation_to_lists(perm),
        objective_before=objective_before,
        objective_after=objective_after,
        weight_distance_before=weight_distance_before,
        weight_distance_after=weight_distance_after,
        iterations=iterations,
        weight_distance_permuted=weight_distance_permuted,
        unobserved=unobserved,
        permuted_b={key: value.cpu() for key, value in permuted_b.items()},
        function_check=function_check,
        symmetry=symmetry_summary(arch.symmetry()),
    )
