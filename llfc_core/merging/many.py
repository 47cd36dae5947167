"""MergeMany (Ainsworth et al., Git Re-Basin, Algorithm 3): N models brought into one basis.

Each round visits the models in a seeded random order; model i is weight-matched onto the mean of
the other N - 1 in their current bases,

    min over P_i of ||mean_{j != i} pi_j(W_j) - P_i(pi_i(W_i))||^2

(:func:`~llfc_core.matching.weight.weight_matching`, the mean being just another state dict), and
pi_i becomes pi_i composed with P_i. The descent starts each match at the model's current basis, so
a match that finds nothing better returns the identity; the rounds stop after one in which no
model moved, or after ``max_rounds``. Every pi_i only reorders units, so each permuted model
computes its own function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from llfc_core.matching.weight import weight_matching
from llfc_core.merging.averaging import average_states
from llfc_core.permutation import (
    Permutation,
    PermutationSpec,
    StateDict,
    apply_permutation,
    identity_permutation,
)
from llfc_core.progress import Reporter


def compose(first: Permutation, then: Permutation) -> Permutation:
    """Permuting by ``first`` then by ``then``, as one permutation: unit i of the result is unit
    ``then[i]`` of the first result, i.e. unit ``first[then[i]]`` of the original."""
    return {name: first[name][then[name]] for name in first}


def is_identity(perm: Permutation) -> bool:
    """Whether ``perm`` moves no unit."""
    return all(
        torch.equal(indices, torch.arange(indices.numel(), device=indices.device))
        for indices in perm.values()
    )


def merge_many_permutations(
    spec: PermutationSpec,
    states: Sequence[Mapping[str, torch.Tensor]],
    *,
    seed: int,
    max_rounds: int,
    reporter: Reporter,
) -> tuple[list[Permutation], list[StateDict], int]:
    """Each model's permutation into the common basis, the models so permuted, and the number
    of rounds made."""
    count = len(states)
    perms = [identity_permutation(spec, state) for state in states]
    permuted: list[StateDict] = [dict(state) for state in states]
    generator = torch.Generator().manual_seed(seed)
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        moved = False
        for position, index in enumerate(torch.randperm(count, generator=generator).tolist()):
            others = average_states([permuted[j] for j in range(count) if j != index])
            step, _ = weight_matching(
                spec,
                others,
                permuted[index],
                seed=seed,
                reporter=reporter.sub(
                    (rounds - 1 + position / count) / max_rounds, 1 / (count * max_rounds)
                ),
            )
            if is_identity(step):
                continue
            perms[index] = compose(perms[index], step)
            permuted[index] = apply_permutation(spec, perms[index], states[index])
            moved = True
        reporter.report(rounds / max_rounds, f"MergeMany, round {rounds}")
        if not moved:
            break
    reporter.report(1.0, f"MergeMany converged after {rounds} rounds")
    return perms, permuted, rounds
