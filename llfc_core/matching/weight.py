"""Weight matching (Git Re-Basin): coordinate descent on the permutations of B.

Objective: min over pi of sum_l ||W_A^l - P_l W_B^l P_{l-1}^T||_F^2, which for permutations is the
same as maximising sum_l <W_A^l, P_l W_B^l P_{l-1}^T>. Fixing every permutation but P_p, that
inner product is linear in P_p:  <P_p, C_p>  with  C_p = sum over the (tensor, axis) pairs p acts
on of  W_A[axis-first, flattened] @ pi_{-p}(W_B)[axis-first, flattened]^T,  so each step is one
linear assignment problem. Permutations are visited in a seeded random order; the loop stops
after a full sweep that improves nothing, or after ``max_iter`` sweeps.

Besides the assignments, the cost is in the products. The term of a (tensor, axis) pair depends
only on the permutations of the tensor's other axes, so each term is kept with the permutations
it was computed for: unchanged, it is reused (a term with no other permuted axis, such as the
first layer's, the classifier's or a BatchNorm vector's, is computed once); when only some
positions of its one other permutation moved, as in every sweep after the first few, it gets a
low-rank update over those positions instead of a new product. When none of C_p's inputs
changed since P_p was last solved, the assignment would come out the same, so the step is
skipped. A's side of every product is prepared once.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from llfc_core.matching.assignment import AssignmentSolver, maximise_assignment
from llfc_core.permutation import (
    Permutation,
    PermutationSpec,
    identity_permutation,
    permuted_tensor,
)
from llfc_core.progress import Reporter

# An improvement must beat float32 round-off of the summed cost, or the descent can cycle.
RELATIVE_TOLERANCE = 1e-7
# A term is updated in place when at most 1/UPDATE_FRACTION of the positions it depends on moved,
# recomputed otherwise (which also bounds the round-off that updates accumulate).
UPDATE_FRACTION = 2


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


class _CostTerms:
    """The terms of every C_p, each brought up to date only as far as its inputs changed."""

    def __init__(
        self,
        spec: PermutationSpec,
        state_a: Mapping[str, torch.Tensor],
        state_b: Mapping[str, torch.Tensor],
    ) -> None:
        self.spec = spec
        self.terms = {
            name: [(key, axis) for key, axis in axes if key not in spec.statistics_keys]
            for name, axes in spec.perm_to_axes.items()
        }
        keys = {key for terms in self.terms.values() for key, _ in terms}
        self.state_a = {key: state_a[key].float() for key in keys}
        self.state_b = {key: state_b[key].float() for key in keys}
        self.a_side = {
            (key, axis): _axis_first(self.state_a[key], axis)
            for terms in self.terms.values()
            for key, axis in terms
        }
        self.depends_on = {
            (key, axis): [
                (other_axis, other)
                for other_axis, other in enumerate(spec.axes_to_perm[key])
                if other_axis != axis and other is not None
            ]
            for terms in self.terms.values()
            for key, axis in terms
        }
        # term -> (the permutations it was computed for, its value)
        self.kept: dict[tuple[str, int], tuple[list[torch.Tensor], torch.Tensor]] = {}

    def dependencies(self, name: str) -> list[str]:
        """The permutations C_name depends on."""
        return sorted({other for term in self.terms[name] for _, other in self.depends_on[term]})

    def _fresh(self, term: tuple[str, int], perm: Permutation) -> torch.Tensor:
        key, axis = term
        b_side = permuted_tensor(self.spec, perm, key, self.state_b, except_axis=axis)
        return self.a_side[term] @ _axis_first(b_side, axis).T

    def _updated(
        self, term: tuple[str, int], value: torch.Tensor, old: torch.Tensor, new: torch.Tensor
    ) -> torch.Tensor | None:
        """The term after its only other permuted axis went from ``old`` to ``new``, as a
        low-rank update over the positions that moved; None when a fresh product is cheaper.

        With T[i, k] = sum_j A[i, j] B[k, old[j]], moving positions J gives
        T + A[:, J] (B[:, new[J]] - B[:, old[J]])^T, at |J| / n of the product's cost.
        """
        key, axis = term
        ((other_axis, _),) = self.depends_on[term]
        moved = torch.nonzero(old != new).flatten()
        if moved.numel() > old.numel() // UPDATE_FRACTION:
            return None
        # Permutations live on the CPU; the weights may not.
        moved_to, moved_from = new[moved].to(value.device), old[moved].to(value.device)
        a_part = self.state_a[key].index_select(other_axis, moved.to(value.device))
        b_tensor = self.state_b[key]
        b_part = b_tensor.index_select(other_axis, moved_to) - b_tensor.index_select(
            other_axis, moved_from
        )
        return value.addmm_(_axis_first(a_part, axis), _axis_first(b_part, axis).T)

    def cost(self, name: str, perm: Permutation) -> np.ndarray:
        """C_name for the current ``perm``."""
        size = perm[name].numel()
        device = next(iter(self.a_side.values())).device
        # Summed in float64, the solvers' type, so no float32 copy is converted afterwards.
        cost = torch.zeros(size, size, dtype=torch.float64, device=device)
        for term in self.terms[name]:
            used = [perm[other] for _, other in self.depends_on[term]]
            kept = self.kept.get(term)
            if kept is None:
                value = self._fresh(term, perm)
            elif all(now is before for now, before in zip(used, kept[0], strict=True)):
                value = kept[1]
            else:
                updated = None
                if len(used) == 1:
                    updated = self._updated(term, kept[1], kept[0][0], used[0])
                value = updated if updated is not None else self._fresh(term, perm)
            self.kept[term] = (used, value)
            cost += value
        return cost.cpu().numpy()


def weight_matching(
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    *,
    seed: int = 0,
    max_iter: int = 100,
    reporter: Reporter | None = None,
    solver: AssignmentSolver | None = None,
) -> tuple[Permutation, int]:
    """The permutation of B that best matches A's weights, and the number of sweeps made.

    ``solver`` defaults to :data:`llfc_core.matching.assignment.maximise_assignment`.
    """
    reporter = reporter or Reporter()
    solver = solver or maximise_assignment
    perm = identity_permutation(spec, state_a)
    terms = _CostTerms(spec, state_a, state_b)
    versions = dict.fromkeys(spec.perm_names, 0)  # how often each permutation changed
    solved_with: dict[str, tuple[int, ...]] = {}
    generator = torch.Generator().manual_seed(seed)
    names = spec.perm_names
    sweeps = 0
    for sweeps in range(1, max_iter + 1):
        improved = False
        for index in torch.randperm(len(names), generator=generator).tolist():
            name = names[index]
            seen = tuple(versions[other] for other in terms.dependencies(name))
            if solved_with.get(name) == seen:
                continue
            cost = terms.cost(name, perm)
            columns = solver(cost)
            rows = np.arange(cost.shape[0])
            old_value = cost[rows, perm[name].numpy()].sum()
            new_value = cost[rows, columns].sum()
            if new_value - old_value > RELATIVE_TOLERANCE * max(1.0, abs(old_value)):
                perm[name] = torch.from_numpy(columns).long()
                versions[name] += 1
                improved = True
            solved_with[name] = seen
        reporter.report(sweeps / max_iter, f"weight matching, sweep {sweeps}")
        if not improved:
            break
    reporter.report(1.0, f"weight matching converged after {sweeps} sweeps")
    return perm, sweeps
