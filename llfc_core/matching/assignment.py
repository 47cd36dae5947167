"""Linear assignment: the column each row takes so that the summed score is largest.

Both matchings reduce to it, once per permutation and step; a nested permutation (attention
heads) reduces to an outer assignment of heads over the inner assignments of every head pair's
entries. The solver is ``lapjv`` from the ``lap`` package (Jonker-Volgenant, exact): on the very
same weight-matching cost matrices it is faster than scipy's ``linear_sum_assignment`` at MLP
widths, and as fast on ResNet-20's small ones (``benchmarks/weight_matching.py`` times both;
benchmarks/RESULTS.md has the numbers). Both return an optimal assignment, so they can differ only
where several assignments score exactly the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lap
import numpy as np
from scipy.optimize import linear_sum_assignment

AssignmentSolver = Callable[[np.ndarray], np.ndarray]
"""Takes an (n, n) score matrix; returns ``columns`` maximising sum_i score[i, columns[i]]."""


def scipy_assignment(score: np.ndarray) -> np.ndarray:
    """scipy's solver (a shortest augmenting path method, exact)."""
    _, columns = linear_sum_assignment(score, maximize=True)
    return np.asarray(columns, dtype=np.int64)


def lap_assignment(score: np.ndarray) -> np.ndarray:
    """lapjv from the ``lap`` package (Jonker-Volgenant, exact), on -score."""
    _, columns, _ = lap.lapjv(np.ascontiguousarray(-score, dtype=np.float64))
    return np.asarray(columns, dtype=np.int64)


maximise_assignment: AssignmentSolver = lap_assignment
"""The solver the matchings use."""


def maximise_nested_assignment(
    scores: Sequence[np.ndarray], heads: int, head_size: int, solver: AssignmentSolver
) -> tuple[np.ndarray, list[np.ndarray], float]:
    """The best nested assignment of ``heads`` x ``head_size`` entries (Verma & Elbayad, TMLR 2024).

    ``scores`` are the (H d, H d) score matrices of the nested permutations that share one head
    order. Head ``i`` of A takes head ``j`` of B with, in score ``k``, its entries matched by the
    inner assignment of the block  S_k[i d:(i+1) d, j d:(j+1) d]  of value  v_k(i, j); the heads
    are matched by the outer assignment on  V(i, j) = sum_k v_k(i, j),  which makes the pair
    (order, withins) optimal among all nested assignments sharing the head order.

    Returns ``order`` (H,), one (H, d) ``within`` per score (row ``i``: the entries of head
    ``order[i]`` taken by head ``i``'s entries) and the summed score reached.
    """
    head_scores = np.zeros((heads, heads))
    inner: list[np.ndarray] = []  # per score: (H, H, d) inner solutions of every head pair
    for score in scores:
        blocks = score.reshape(heads, head_size, heads, head_size).transpose(0, 2, 1, 3)
        solutions = np.empty((heads, heads, head_size), dtype=np.int64)
        entries = np.arange(head_size)
        for i in range(heads):
            for j in range(heads):
                columns = solver(blocks[i, j])
                solutions[i, j] = columns
                head_scores[i, j] += blocks[i, j][entries, columns].sum()
        inner.append(solutions)
    order = solver(head_scores)
    heads_of_a = np.arange(heads)
    withins = [solutions[heads_of_a, order] for solutions in inner]
    return order, withins, float(head_scores[heads_of_a, order].sum())
