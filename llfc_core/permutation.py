"""Permutation symmetries of a network, as data.

A :class:`PermutationSpec` says, for every hidden permutation, which axes of which tensors it
acts on. Matching, applying and checking a permutation are small functions over that data, so a
new architecture is a new spec, not new algorithm code.

Convention: ``perm[name]`` is an index vector; permuting a tensor means
``tensor.index_select(axis, perm[name])`` on every axis that ``name`` acts on, so unit ``i`` of the
permuted model is unit ``perm[name][i]`` of the original.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

StateDict = dict[str, torch.Tensor]
Permutation = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PermutationSpec:
    """Which tensor axes each permutation acts on, and where its activations are observed.

    ``axes_to_perm[key][axis]`` is the permutation acting on that axis of tensor ``key``
    (None for an axis no permutation touches). ``perm_to_axes`` is its inverse.
    ``perm_to_features[name]`` lists module names whose outputs carry permutation ``name`` on
    dimension 1; activation matching correlates those outputs. ``statistics_keys`` are tensors
    that are permuted but are not learned weights (BatchNorm running statistics), and so are
    left out of the weight-matching objective.
    """

    axes_to_perm: Mapping[str, tuple[str | None, ...]]
    perm_to_features: Mapping[str, tuple[str, ...]]
    statistics_keys: frozenset[str] = frozenset()
    perm_to_axes: Mapping[str, tuple[tuple[str, int], ...]] = field(init=False)

    def __post_init__(self) -> None:
        inverse: dict[str, list[tuple[str, int]]] = {}
        for key, axis_perms in self.axes_to_perm.items():
            for axis, perm_name in enumerate(axis_perms):
                if perm_name is not None:
                    inverse.setdefault(perm_name, []).append((key, axis))
        object.__setattr__(
            self, "perm_to_axes", {name: tuple(axes) for name, axes in inverse.items()}
        )

    @property
    def perm_names(self) -> list[str]:
        """Permutation names in the order the spec defines them."""
        return list(self.perm_to_axes)


def perm_sizes(spec: PermutationSpec, state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The number of units each permutation acts on, read off the state dict."""
    return {name: state[key].shape[axis] for name, ((key, axis), *_) in spec.perm_to_axes.items()}


def identity_permutation(spec: PermutationSpec, state: Mapping[str, torch.Tensor]) -> Permutation:
    """The permutation that changes nothing."""
    return {name: torch.arange(size) for name, size in perm_sizes(spec, state).items()}


def random_permutation(
    spec: PermutationSpec, state: Mapping[str, torch.Tensor], seed: int
) -> Permutation:
    """A uniformly random permutation of every hidden unit group, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randperm(size, generator=generator)
        for name, size in perm_sizes(spec, state).items()
    }


def invert_permutation(perm: Permutation) -> Permutation:
    """The permutation that undoes ``perm``."""
    return {name: torch.argsort(indices) for name, indices in perm.items()}


def permuted_tensor(
    spec: PermutationSpec,
    perm: Permutation,
    key: str,
    state: Mapping[str, torch.Tensor],
    except_axis: int | None = None,
) -> torch.Tensor:
    """Tensor ``key`` of ``state`` with ``perm`` applied on every axis but ``except_axis``."""
    tensor = state[key]
    for axis, perm_name in enumerate(spec.axes_to_perm.get(key, ())):
        if axis == except_axis or perm_name is None:
            continue
        tensor = tensor.index_select(axis, perm[perm_name].to(tensor.device))
    return tensor


def apply_permutation(
    spec: PermutationSpec, perm: Permutation, state: Mapping[str, torch.Tensor]
) -> StateDict:
    """A new state dict: ``state`` with every permuted axis reordered. The function is unchanged."""
    return {key: permuted_tensor(spec, perm, key, state) for key in state}


def permutation_to_lists(perm: Permutation) -> dict[str, list[int]]:
    """A JSON-ready copy of ``perm``."""
    return {name: [int(i) for i in indices.tolist()] for name, indices in perm.items()}
