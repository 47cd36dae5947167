"""Orthogonal alignment of attention heads (Theus et al., "Generalized Linear Mode Connectivity
for Transformers", NeurIPS 2025).

Within one attention head, the scores  q . k  and the value path  W_O v  are unchanged by any
orthogonal map R of the head's dimensions applied to both sides: (R q) . (R k) = q . k, and
(W_O R^T)(R v) = W_O v. So after the heads are matched, each head pair may take the best
orthogonal map instead of only a permutation. For a nested permutation N (the query/key or the
value/output dimensions of one attention) and matched head i, with A_u and B_u the head's block of
each tensor N acts on (use u), its axis first and flattened, and B already permuted:

  min over orthogonal R of  sum_u ||A_u - R B_u||_F^2   <=>   max_R tr(R^T M),  M = sum_u A_u B_u^T,

orthogonal Procrustes, solved by R = U V^T from the SVD  M = U S V^T. Every use then has R applied
along its axis (:func:`map_along_axis`); on an input axis (the output projection's columns) that is
W R^T, the inverse a function-preserving map needs, because R^-1 = R^T. A permutation is the special
case R = P, where applying it is ``index_select``. Each head's weight distance can only fall:
R = I, the permutation already found, is one of the candidates.

The residual stream and the MLP stay permutations: LayerNorm's mean subtraction and per-unit gain
and bias, and the MLP's elementwise activation, commute with permutations but not with rotations.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from llfc_core.errors import InvalidParameterError
from llfc_core.params import MATCH_SYMMETRIES
from llfc_core.permutation import AxisUse, PermutationSpec, StateDict
from llfc_core.symmetry.derive import DerivedSymmetry


def check_symmetry(derived: DerivedSymmetry, symmetry: str) -> None:
    """Refuse an unknown symmetry, and 'orthogonal' for an arch without attention heads that
    may move (saying what holds them in place, when something does)."""
    if symmetry not in MATCH_SYMMETRIES:
        raise InvalidParameterError(
            f"'symmetry' must be one of {', '.join(MATCH_SYMMETRIES)}, got {symmetry!r}."
        )
    if symmetry == "orthogonal" and not derived.spec.nested:
        held = sorted({axis.reason for axis in derived.unpermuted if "every head" in axis.reason})
        why = (
            f"its attention heads are held in place ({'; '.join(held[:3])})"
            if held
            else "this arch has no attention heads"
        )
        raise InvalidParameterError(
            "'symmetry': 'orthogonal' maps the dimensions within attention heads by rotations, "
            f"and {why}; its units (through LayerNorm, BatchNorm and elementwise activations) "
            "allow permutations only. Use 'permutation'."
        )


def _head_blocks(tensor: torch.Tensor, use: AxisUse, heads: int) -> torch.Tensor:
    """The entries ``use`` covers as (heads, head units, everything else), in float64."""
    moved = tensor.double().movedim(use.axis, 0)
    units = use.units if use.units is not None else moved.shape[0] // use.block
    moved = moved.narrow(0, use.offset, units * use.block)
    return moved.reshape(heads, units // heads, -1)


def map_along_axis(tensor: torch.Tensor, use: AxisUse, maps: torch.Tensor) -> torch.Tensor:
    """``tensor`` with the units ``use`` covers replaced by ``maps[h] @ (head h's units)``:
    a linear map of each head's units along ``use.axis`` (``maps``: heads x d x d)."""
    heads = maps.shape[0]
    mapped = maps @ _head_blocks(tensor, use, heads)
    moved = tensor.movedim(use.axis, 0).clone()
    moved[use.offset : use.offset + mapped.shape[0] * mapped.shape[1] * use.block] = mapped.reshape(
        -1, *moved.shape[1:]
    ).to(tensor.dtype)
    return moved.movedim(0, use.axis)


def procrustes_maps(
    spec: PermutationSpec,
    name: str,
    state_a: Mapping[str, torch.Tensor],
    permuted_b: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """The orthogonal map of each head of nested permutation ``name`` (heads x d x d) that
    brings permuted B's head closest to A's: R = U V^T of M = sum over uses of A_u B_u^T."""
    heads = spec.nested[name].heads
    products = [
        _head_blocks(state_a[use.key], use, heads)
        @ _head_blocks(permuted_b[use.key], use, heads).transpose(1, 2)
        for use in spec.perm_to_uses[name]
    ]
    left, _, right = torch.linalg.svd(torch.stack(products).sum(0))
    maps: torch.Tensor = left @ right
    return maps


def align_heads_orthogonally(
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    permuted_b: Mapping[str, torch.Tensor],
) -> StateDict:
    """``permuted_b`` (B with its matched permutation applied) with every head of every nested
    permutation rotated onto A's by its Procrustes map; B's function is unchanged. A nested
    permutation that also acts on BatchNorm statistics (which a rotation would not keep) stays a
    permutation."""
    aligned = dict(permuted_b)
    for name in spec.nested:
        if any(use.key in spec.statistics_keys for use in spec.perm_to_uses[name]):
            continue
        maps = procrustes_maps(spec, name, state_a, aligned)
        for use in spec.perm_to_uses[name]:
            aligned[use.key] = map_along_axis(aligned[use.key], use, maps)
    return aligned
