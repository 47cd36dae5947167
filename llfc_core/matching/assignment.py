"""Linear assignment: the column each row takes so that the summed score is largest.

Both matchings reduce to it, once per permutation and step. Two exact solvers are available:
scipy's ``linear_sum_assignment`` and the ``lap`` package's ``lapjv`` (Jonker-Volgenant), used
by default when installed because it is the faster of the two on the dense square problems of
weight matching (see ``benchmarks/weight_matching.py``). Both return an optimal assignment, so
they can differ only where several assignments score exactly the same.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

AssignmentSolver = Callable[[np.ndarray], np.ndarray]
"""Takes an (n, n) score matrix; returns ``columns`` maximising sum_i score[i, columns[i]]."""


def scipy_assignment(score: np.ndarray) -> np.ndarray:
    """scipy's solver (a shortest augmenting path method, exact)."""
    _, columns = linear_sum_assignment(score, maximize=True)
    return np.asarray(columns, dtype=np.int64)


def lap_assignment(score: np.ndarray) -> np.ndarray:
    """lapjv from the optional ``lap`` package (Jonker-Volgenant, exact), on -score."""
    import lap

    _, columns, _ = lap.lapjv(np.ascontiguousarray(-score, dtype=np.float64))
    return np.asarray(columns, dtype=np.int64)


def _default_solver() -> AssignmentSolver:
    try:
        import lap  # noqa: F401
    except ImportError:
        return scipy_assignment
    return lap_assignment


maximise_assignment: AssignmentSolver = _default_solver()
"""The solver the matchings use: lapjv when ``lap`` is installed, scipy's otherwise."""
