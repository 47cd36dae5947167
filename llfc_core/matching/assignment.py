"""Linear assignment: the column each row takes so that the summed score is largest.

Both matchings reduce to it, once per permutation and step. The solver is ``lapjv`` from the
``lap`` package (Jonker-Volgenant, exact): on the very same weight-matching cost matrices it is
faster than scipy's ``linear_sum_assignment`` at MLP widths, and as fast on ResNet-20's small ones
(``benchmarks/weight_matching.py`` times both; benchmarks/RESULTS.md has the numbers). Both return
an optimal assignment, so they can differ only where several assignments score exactly the same.
"""

from __future__ import annotations

from collections.abc import Callable

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
