"""Weight matching (Git Re-Basin): coordinate descent on the permutations of B.

Objective: min over pi of sum_l ||W_A^l - P_l W_B^l P_{l-1}^T||_F^2, which for permutations is the
same as maximising sum_l <W_A^l, P_l W_B^l P_{l-1}^T>. Fixing every permutation but P_p, that
inner product is linear in P_p:  <P_p, C_p>  with  C_p = sum over the (tensor, axis) pairs p acts
on of  W_A[axis-first, flattened] @ pi_{-p}(W_B)[axis-first, flattened]^T,  so each step is one
linear assignment problem. Permutations are visited in a seeded random order; the loop stops
after a full sweep that improves nothing, or after ``max_iter`` sweeps.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from llfc_core.permutation import (
    Permutation,
    PermutationSpec,
    identity_permutation,
    permuted_tensor,
)
from llfc_core.progress import Reporter

# An improvement must beat float32 round-off of the summed cost, or the descent can cycle.
RELATIVE_TOLERANCE = 1e-7


def _axis_first(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1)


def weight_objective(
    spec: PermutationSpec,
    perm: Permutation,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
) -> float:
    """sum over learned tensors of ||W_A - pi(W_B)||_F^2 (BatchNorm running stats excluded)."""
    total = 0.0
    for key in spec.axes_to_perm:
        if key in spec.statistics_keys:
            continue
        difference = state_a[key].float() - permuted_tensor(spec, perm, key, state_b).float()
        total += float(difference.pow(2).sum())
    return total


def _cost_matrix(
    spec: PermutationSpec,
    perm: Permutation,
    perm_name: str,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
) -> np.ndarray:
    size = perm[perm_name].numel()
    cost = torch.zeros(size, size, dtype=torch.float32, device=next(iter(state_a.values())).device)
    for key, axis in spec.perm_to_axes[perm_name]:
        if key in spec.statistics_keys:
            continue
        w_a = _axis_first(state_a[key].float(), axis)
        w_b = _axis_first(permuted_tensor(spec, perm, key, state_b, except_axis=axis).float(), axis)
        cost += w_a @ w_b.T
    return cost.double().cpu().numpy()


def weight_matching(
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    *,
    seed: int = 0,
    max_iter: int = 100,
    reporter: Reporter | None = None,
) -> tuple[Permutation, int]:
    """The permutation of B that best matches A's weights, and the number of sweeps made."""
    reporter = reporter or Reporter()
    perm = identity_permutation(spec, state_a)
    generator = torch.Generator().manual_seed(seed)
    names = spec.perm_names
    sweeps = 0
    for sweeps in range(1, max_iter + 1):
        improved = False
        for index in torch.randperm(len(names), generator=generator).tolist():
            name = names[index]
            cost = _cost_matrix(spec, perm, name, state_a, state_b)
            _, columns = linear_sum_assignment(cost, maximize=True)
            rows = np.arange(cost.shape[0])
            old_value = cost[rows, perm[name].numpy()].sum()
            new_value = cost[rows, columns].sum()
            if new_value - old_value > RELATIVE_TOLERANCE * max(1.0, abs(old_value)):
                perm[name] = torch.from_numpy(columns).long()
                improved = True
        reporter.report(sweeps / max_iter, f"weight matching, sweep {sweeps}")
        if not improved:
            break
    reporter.report(1.0, f"weight matching converged after {sweeps} sweeps")
    return perm, sweeps
