"""Weight matching's cost matrices, however they are kept up to date, are the paper's formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llfc_core.archs import parse_arch
from llfc_core.matching.weight import _CostTerms
from llfc_core.permutation import Permutation, identity_permutation, permuted_tensor

ARCHS = {
    "mlp": {"name": "mlp", "widths": [64, 48, 32, 10]},
    "resnet": {"name": "resnet", "depth": 8, "width": 1, "in_channels": 1, "input_size": 8},
}


def _direct_cost(spec, perm: Permutation, name: str, state_a, state_b) -> np.ndarray:
    """sum over the learned (tensor, axis) pairs of A[axis-first] @ pi_{-name}(B)[axis-first]^T."""
    size = perm[name].numel()
    cost = torch.zeros(size, size, dtype=torch.float64)
    for key, axis in spec.perm_to_axes[name]:
        if key in spec.statistics_keys:
            continue
        a_side = state_a[key].double().movedim(axis, 0).reshape(size, -1)
        permuted_b = permuted_tensor(spec, perm, key, state_b, except_axis=axis)
        cost += a_side @ permuted_b.double().movedim(axis, 0).reshape(size, -1).T
    return cost.numpy()


def _swapped(indices: torch.Tensor, count: int) -> torch.Tensor:
    """``indices`` with its first ``count`` pairs of positions exchanged (a few moved units)."""
    swapped = indices.clone()
    swapped[: 2 * count : 2], swapped[1 : 2 * count : 2] = (
        indices[1 : 2 * count : 2],
        indices[: 2 * count : 2],
    )
    return swapped


@pytest.mark.parametrize("arch_name", list(ARCHS))
def test_kept_and_updated_cost_terms_equal_the_direct_formula(arch_name: str) -> None:
    arch = parse_arch(ARCHS[arch_name])
    spec = arch.permutation_spec()
    torch.manual_seed(0)
    state_a = arch.build().state_dict()
    state_b = arch.build().state_dict()
    terms = _CostTerms(spec, state_a, state_b)
    perm = identity_permutation(spec, state_a)
    generator = torch.Generator().manual_seed(1)
    # Fresh products, then whole new permutations (recomputed), then a few moved units (low-rank
    # updates), then nothing changed (kept values).
    for step in range(4):
        for name in spec.perm_names:
            if step == 1:
                perm[name] = torch.randperm(perm[name].numel(), generator=generator)
            elif step == 2:
                perm[name] = _swapped(perm[name], count=2)
            cost = terms.cost(name, perm)
            assert cost.dtype == np.float64
            expected = _direct_cost(spec, perm, name, state_a, state_b)
            np.testing.assert_allclose(cost, expected, rtol=1e-5, atol=1e-5)
