"""Weight matching (Git Re-Basin): coordinate descent on the permutations of B.

Objective: min over pi of sum_l ||W_A^l - P_l W_B^l P_{l-1}^T||_F^2, which for permutations is the
same as maximising sum_l <W_A^l, P_l W_B^l P_{l-1}^T>. Fixing every permutation but P_p, that
inner product is linear in P_p:  <P_p, C_p>  with  C_p = sum over the (tensor, axis) pairs p acts
on of  W_A[axis-first, flattened] @ pi_{-p}(W_B)[axis-first, flattened]^T,  so each step is one
linear assignment problem. Permutations are visited in a seeded random order; the loop stops
after a full sweep that improves nothing, or after ``max_iter`` sweeps.

Attention's nested permutations (heads x head dimensions, :class:`~llfc_core.permutation.Nesting`)
are solved as Verma & Elbayad (TMLR 2024) do: a head order and the nested permutations N sharing
it are one step. Each C_N is built as above; head i of A and head j of B score
  V(i, j) = sum_N max over permutations Q of <Q, C_N[i d:(i+1) d, j d:(j+1) d]>  (d = head size),
one inner assignment per head pair and N; the outer assignment on V orders the heads, and each
matched pair keeps its inner solutions. The step maximises sum_N <P_N, C_N> over every nested
choice, the current one included, so the descent's improvement test is unchanged; every
permutation it moves counts as changed.

Besides the assignments, the cost is in the products. The term of a (tensor, axis) pair depends
only on the permutations of the tensor's other axes, so each term is kept with the permutations
it was computed for: unchanged, it is reused (a term with no other permuted axis, such as the
first layer's, the classifier's or a BatchNorm vector's, is computed once); when only some
positions of its one other permutation moved, as in every sweep after the first few, it gets a
low-rank update over those positions instead of a new product. When none of C_p's inputs
(for a head order: of any of its C_N) changed since the step was last solved, the assignment
would come out the same, so the step is skipped. Both sides of every product are laid out
axis-first once.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from llfc_core.matching.assignment import (
    AssignmentSolver,
    maximise_assignment,
    maximise_nested_assignment,
)
from llfc_core.permutation import (
    AxisUse,
    Permutation,
    PermutationSpec,
    composite_indices,
    expanded_permutation,
    identity_permutation,
    nested_indices,
    permuted_tensor,
)
from llfc_core.progress import Reporter

# An improvement must beat float32 round-off of the summed cost, or the descent can cycle.
RELATIVE_TOLERANCE = 1e-7
# A term is updated in place when at most 1/UPDATE_FRACTION of the positions it depends on moved,
# recomputed otherwise (which also bounds the round-off that updates accumulate).
UPDATE_FRACTION = 2


def _flattened(axis_first: torch.Tensor, block: int = 1) -> torch.Tensor:
    """A tensor whose axis 0 is the permuted one, as a matrix: one row per unit, a unit being
    ``block`` consecutive entries of axis 0 (a channel of a flattened feature map)."""
    return axis_first.reshape(axis_first.shape[0] // block, -1)


def _axis_first(tensor: torch.Tensor, use: AxisUse) -> torch.Tensor:
    """The entries of ``tensor`` that ``use`` covers, its axis first, contiguous."""
    moved = tensor.float().movedim(use.axis, 0)
    if use.units is not None:
        moved = moved.narrow(0, use.offset, use.units * use.block)
    return moved.contiguous()


def weight_distance(
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
) -> float:
    """sum over the learned tensors the spec permutes of ||W_A - W_B||_F^2."""
    return sum(
        float((state_a[key].float() - state_b[key].float()).pow(2).sum())
        for key in spec.axes_to_perm
        if key not in spec.statistics_keys
    )


def weight_objective(
    spec: PermutationSpec,
    perm: Permutation,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
) -> float:
    """sum over learned tensors of ||W_A - pi(W_B)||_F^2 (BatchNorm running stats excluded)."""
    total = 0.0
    expanded = expanded_permutation(spec, perm)
    for key in spec.axes_to_perm:
        if key in spec.statistics_keys:
            continue
        difference = state_a[key].float() - permuted_tensor(spec, expanded, key, state_b).float()
        total += float(difference.pow(2).sum())
    return total


def _parts(spec: PermutationSpec, name: str) -> list[str]:
    """The permutations behind ``name``: itself, or a composite's segments'."""
    if name not in spec.composites:
        return [name]
    return [segment.perm for segment in spec.composites[name] if segment.perm is not None]


class _CostTerms:
    """The terms of every C_p, each brought up to date only as far as its inputs changed.

    Both sides of a term are stored axis-first and contiguous, so permuting its other axis is
    one ``index_select`` whose result is already the flattened matrix, without a second copy to
    move the axis.
    """

    def __init__(
        self,
        spec: PermutationSpec,
        state_a: Mapping[str, torch.Tensor],
        state_b: Mapping[str, torch.Tensor],
    ) -> None:
        self.terms = {
            name: [use for use in uses if use.key not in spec.statistics_keys]
            for name, uses in spec.perm_to_uses.items()
        }
        every_term = [term for terms in self.terms.values() for term in terms]
        self.a_side = {use: _axis_first(state_a[use.key], use) for use in every_term}
        self.b_side = {use: _axis_first(state_b[use.key], use) for use in every_term}
        # term -> (dimension of its axis-first tensors, permutation or composite) for every
        # other permuted axis
        self.depends_on = {
            use: [
                (other_axis + (other_axis < use.axis), other)
                for other_axis, other in enumerate(spec.axes_to_perm[use.key])
                if other_axis != use.axis and other is not None
            ]
            for use in every_term
        }
        # name -> the permutations C_name depends on
        # name -> the permutations C_name depends on, composites replaced by their parts
        self.dependencies = {
            name: sorted(
                {
                    part
                    for term in terms
                    for _, other in self.depends_on[term]
                    for part in _parts(spec, other)
                }
            )
            for name, terms in self.terms.items()
        }
        # term -> (the permutations it was computed for, its value)
        self.kept: dict[AxisUse, tuple[list[torch.Tensor], torch.Tensor]] = {}

    def _fresh(self, term: AxisUse, perm: Permutation) -> torch.Tensor:
        b_side = self.b_side[term]
        for dim, other in self.depends_on[term]:
            b_side = b_side.index_select(dim, perm[other].to(b_side.device))
        return _flattened(self.a_side[term], term.block) @ _flattened(b_side, term.block).T

    def _updated(
        self, term: AxisUse, value: torch.Tensor, old: torch.Tensor, new: torch.Tensor
    ) -> torch.Tensor | None:
        """The term after its only other permuted axis went from ``old`` to ``new``, as a
        low-rank update over the positions that moved; None when a fresh product is cheaper.

        With T[i, k] = sum_j A[i, j] B[k, old[j]], moving positions J gives
        T + A[:, J] (B[:, new[J]] - B[:, old[J]])^T, at |J| / n of the product's cost.
        """
        ((dim, _),) = self.depends_on[term]
        moved = torch.nonzero(old != new).flatten()
        if moved.numel() > old.numel() // UPDATE_FRACTION:
            return None
        # Permutations live on the CPU; the weights may not.
        moved_to, moved_from = new[moved].to(value.device), old[moved].to(value.device)
        a_part = self.a_side[term].index_select(dim, moved.to(value.device))
        b_side = self.b_side[term]
        b_part = b_side.index_select(dim, moved_to) - b_side.index_select(dim, moved_from)
        return value.addmm_(_flattened(a_part, term.block), _flattened(b_part, term.block).T)

    def cost(self, name: str, perm: Permutation) -> np.ndarray:
        """C_name for the current ``perm`` (composites expanded), summed in float64 (the
        solvers' type)."""
        values = []
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
            values.append(value)
        if not values:  # the permutation acts on BatchNorm statistics only
            size = perm[name].numel()
            return np.zeros((size, size))
        return summed_on_host(values)


def summed_on_host(terms: list[torch.Tensor]) -> np.ndarray:
    """The float64 sum of float32 ``terms``, in order, as a host array.

    On a GPU the terms are summed there and copied once (one synchronisation per solve, not one
    per term); on the CPU numpy sums them, several times faster than torch adds float32 into
    float64. Both add the same float64 values in the same order: the same bits.
    """
    if terms[0].device.type != "cpu":
        return summed_on_device(terms).cpu().numpy()
    cost = terms[0].numpy().astype(np.float64)
    for term in terms[1:]:
        np.add(cost, term.numpy(), out=cost)
    return cost


def summed_on_device(terms: list[torch.Tensor]) -> torch.Tensor:
    """The float64 sum of float32 ``terms``, in order, on their device."""
    total = terms[0].to(torch.float64)
    for term in terms[1:]:
        total.add_(term)
    return total


def descent_steps(spec: PermutationSpec) -> list[list[str]]:
    """The permutations each step of the descent solves together: one plain permutation, or a
    head order with every nested permutation sharing it."""
    orders = spec.head_orders
    steps: list[list[str]] = []
    for name in spec.perm_names:
        nesting = spec.nested.get(name)
        if nesting is None:
            steps.append([name])
        elif orders[nesting.head_order][0] == name:
            steps.append(orders[nesting.head_order])
    return steps


def solve_step(
    spec: PermutationSpec,
    step: list[str],
    costs: list[np.ndarray],
    solver: AssignmentSolver,
) -> tuple[list[torch.Tensor], float]:
    """The index vectors maximising the summed score <P, C> of the step's permutations, and
    that score: one assignment, or for a head order the nested one."""
    nesting = spec.nested.get(step[0])
    if nesting is None:
        (cost,) = costs
        columns = solver(cost)
        value = float(cost[np.arange(cost.shape[0]), columns].sum())
        return [torch.from_numpy(columns).long()], value
    order, withins, value = maximise_nested_assignment(
        costs, nesting.heads, nesting.head_size, solver
    )
    order_indices = torch.from_numpy(order).long()
    return [
        nested_indices(order_indices, torch.from_numpy(within).long()) for within in withins
    ], value


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
    # The composites' index vectors, remade only when one of their parts changes, so that the
    # terms that depend on them are reused while they stand still.
    expanded = expanded_permutation(spec, perm)
    composites_of = {
        name: [
            composite
            for composite, segments in spec.composites.items()
            if any(segment.perm == name for segment in segments)
        ]
        for name in spec.perm_names
    }
    terms = _CostTerms(spec, state_a, state_b)
    versions = dict.fromkeys(spec.perm_names, 0)  # how often each permutation changed
    steps = descent_steps(spec)
    step_dependencies = [
        sorted({other for name in step for other in terms.dependencies[name]}) for step in steps
    ]
    solved_with: dict[int, tuple[int, ...]] = {}
    generator = torch.Generator().manual_seed(seed)
    sweeps = 0
    for sweeps in range(1, max_iter + 1):
        improved = False
        for index in torch.randperm(len(steps), generator=generator).tolist():
            step = steps[index]
            seen = tuple(versions[other] for other in step_dependencies[index])
            if solved_with.get(index) == seen:
                continue
            costs = [terms.cost(name, expanded) for name in step]
            solutions, new_value = solve_step(spec, step, costs, solver)
            old_value = sum(
                float(cost[np.arange(cost.shape[0]), perm[name].numpy()].sum())
                for name, cost in zip(step, costs, strict=True)
            )
            if new_value - old_value > RELATIVE_TOLERANCE * max(1.0, abs(old_value)):
                for name, indices in zip(step, solutions, strict=True):
                    if torch.equal(indices, perm[name]):
                        continue
                    perm[name] = expanded[name] = indices
                    for composite in composites_of[name]:
                        expanded[composite] = composite_indices(spec.composites[composite], perm)
                    versions[name] += 1
                improved = True
            solved_with[index] = seen
        reporter.report(sweeps / max_iter, f"weight matching, sweep {sweeps}")
        if not improved:
            break
    reporter.report(1.0, f"weight matching converged after {sweeps} sweeps")
    return perm, sweeps
