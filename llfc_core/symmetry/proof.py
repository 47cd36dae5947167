"""Proving a permutation spec before it is used: permuted weights must compute the same function.

A spec is a claim that permuting the tensors it names, by any permutations of its groups, leaves
the model's outputs unchanged. :func:`prove_symmetry` tests the claim on the model's own weights
with random permutations and returns the largest change of the outputs relative to their scale;
:func:`check_proof` turns a change above tolerance into an error naming the permutation that
broke the function (found by permuting one group at a time), never a silently wrong number.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from llfc_core.errors import SymmetryProofError
from llfc_core.graph_lock import GRAPH_LOCK
from llfc_core.permutation import (
    Permutation,
    PermutationSpec,
    apply_permutation,
    identity_permutation,
    random_permutation,
)

PROOF_TOLERANCE = 1e-4
"""Largest output change, relative to the largest output, that a correct spec can show in
float32 (round-off of reordered sums is ~1e-6 relative in deep nets)."""


def relative_change(reference: torch.Tensor, other: torch.Tensor) -> float:
    """max |other - reference| / max |reference| (0 when both are all zeros)."""
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    change = float((other - reference).abs().max()) if reference.numel() else 0.0
    if scale == 0.0:
        return change
    return change / scale


def _outputs(
    model: nn.Module, state: Mapping[str, torch.Tensor], inputs: torch.Tensor
) -> torch.Tensor:
    model.load_state_dict(dict(state))
    with torch.inference_mode(), GRAPH_LOCK:
        output = model(inputs)
    return (
        output.float()
        if isinstance(output, torch.Tensor)
        else torch.cat([o.float().flatten() for o in output])
    )


def prove_symmetry(
    model: nn.Module,
    spec: PermutationSpec,
    inputs: torch.Tensor,
    seed: int = 0,
    perm: Permutation | None = None,
) -> float:
    """The relative output change on ``inputs`` when ``model``'s weights are permuted by ``perm``
    (random permutations from ``seed`` when None). ``model`` is not changed."""
    work = copy.deepcopy(model).eval()
    state = {key: value.detach().clone() for key, value in work.state_dict().items()}
    perm = perm if perm is not None else random_permutation(spec, state, seed)
    reference = _outputs(work, state, inputs)
    permuted = _outputs(work, apply_permutation(spec, perm, state), inputs)
    return relative_change(reference, permuted)


def _groups(spec: PermutationSpec) -> dict[str, list[str]]:
    """The permutations that can move alone: each plain one, and each attention's nested
    permutations together under their shared head order."""
    groups = {name: [name] for name in spec.perm_names if name not in spec.nested}
    groups.update(spec.head_orders)
    return groups


def check_proof(
    model: nn.Module,
    spec: PermutationSpec,
    inputs: torch.Tensor,
    seed: int = 0,
    tolerance: float = PROOF_TOLERANCE,
) -> float:
    """:func:`prove_symmetry`'s figure, or :class:`SymmetryProofError` naming the permutation
    whose reordering changed the outputs."""
    change = prove_symmetry(model, spec, inputs, seed)
    if change <= tolerance:
        return change
    state = model.state_dict()
    random = random_permutation(spec, state, seed)
    broken = []
    for name, members in _groups(spec).items():
        single = identity_permutation(spec, state)
        for member in members:
            single[member] = random[member]
        if prove_symmetry(model, spec, inputs, seed, single) > tolerance:
            broken.append(name)
    named = ", ".join(broken) if broken else "no single permutation (only their combination)"
    raise SymmetryProofError(
        f"The permutation spec failed its proof: permuting the weights changed the outputs by "
        f"{change:.2e} of their scale (tolerance {tolerance:.0e}); broken by {named}. This is "
        "a bug in the spec derivation: please report the arch."
    )
