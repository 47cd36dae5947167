"""Permutation symmetries of a network, as data.

A :class:`PermutationSpec` says, for every hidden permutation, which axes of which tensors it
acts on. Matching, applying and checking a permutation are small functions over that data, so a
new architecture is a new spec, not new algorithm code. Specs are derived from a model's graph
(:mod:`llfc_core.symmetry`), never written by hand.

Convention: ``perm[name]`` is an index vector; permuting a tensor means
``tensor.index_select(axis, perm[name])`` on every axis that ``name`` acts on, so unit ``i`` of the
permuted model is unit ``perm[name][i]`` of the original.

Most axes carry one permutation. An axis built from several (the output of a concatenation, as
in DenseNet) or from one repeated over positions (a feature map flattened before a Linear, as in
torchvision's VGG: channel-major, so unit ``c`` owns ``block`` consecutive entries) carries a
*composite*: a list of :class:`Segment` s, each a permutation (or None: entries left in place)
over ``units`` units of ``block`` entries. Composites are never solved for; their index vectors
are made from their parts (:func:`expanded_permutation`).

Attention adds a third kind: a *nested* permutation (:class:`Nesting`) of ``heads`` x
``head_size`` entries, head-major. Whole heads move by a head order shared with every other
nested permutation of the same attention (query/key and value/output dimensions of one head
stay together), and the entries within each head by one permutation per head. Its index vector
is an ordinary one over all ``heads * head_size`` entries, so applying it is no different; only
drawing and solving it respect the structure: row ``i`` of ``perm[name].view(heads, head_size)``
is ``order[i] * head_size + within[i]``, head ``i`` of the result being head ``order[i]`` of the
original with its entries reordered by ``within[i]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

StateDict = dict[str, torch.Tensor]
Permutation = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Segment:
    """``units`` consecutive units of ``block`` entries each, moved by ``perm`` (None: in place)."""

    perm: str | None
    units: int
    block: int = 1

    @property
    def length(self) -> int:
        return self.units * self.block


@dataclass(frozen=True)
class AxisUse:
    """Where a permutation acts: entries ``offset`` to ``offset + units * block`` of ``axis`` of
    tensor ``key``, ``block`` consecutive entries per unit (a whole axis: offset 0, block 1)."""

    key: str
    axis: int
    offset: int = 0
    block: int = 1
    units: int | None = None
    """None for a whole axis (its length); set for a segment of a composite."""


@dataclass(frozen=True)
class Nesting:
    """A nested permutation's structure: ``heads`` heads of ``head_size`` entries, the heads
    moved by the order named ``head_order`` (shared by every permutation of one attention)."""

    head_order: str
    heads: int
    head_size: int


@dataclass(frozen=True)
class PermutationSpec:
    """Which tensor axes each permutation acts on, and where its activations are observed.

    ``axes_to_perm[key][axis]`` is the permutation acting on that axis of tensor ``key``
    (None for an axis no permutation touches), or the name of a composite in ``composites``.
    ``perm_to_uses`` is its inverse over the permutations that are solved for (composites
    expanded into their segments). ``perm_to_features[name]`` lists module names whose outputs
    carry permutation ``name`` on dimension 1; activation matching correlates those outputs.
    ``statistics_keys`` are tensors that are permuted but are not learned weights (BatchNorm
    running statistics), and so are left out of the weight-matching objective. ``nested`` gives
    the structure of each nested permutation (attention heads), ``feature_axes`` the units'
    axis of a feature site that does not have them on axis 1.
    """

    axes_to_perm: Mapping[str, tuple[str | None, ...]]
    perm_to_features: Mapping[str, tuple[str, ...]]
    statistics_keys: frozenset[str] = frozenset()
    composites: Mapping[str, tuple[Segment, ...]] = field(default_factory=dict)
    nested: Mapping[str, Nesting] = field(default_factory=dict)
    feature_axes: Mapping[str, int] = field(default_factory=dict)
    """The axis of units of each feature site in ``perm_to_features`` that does not have them on
    axis 1 (a transformer's tokens x units: the last)."""
    perm_to_uses: Mapping[str, tuple[AxisUse, ...]] = field(init=False)

    def __post_init__(self) -> None:
        inverse: dict[str, list[AxisUse]] = {}
        for key, axis_perms in self.axes_to_perm.items():
            for axis, perm_name in enumerate(axis_perms):
                if perm_name is None:
                    continue
                if perm_name not in self.composites:
                    inverse.setdefault(perm_name, []).append(AxisUse(key, axis))
                    continue
                offset = 0
                for segment in self.composites[perm_name]:
                    if segment.perm is not None:
                        inverse.setdefault(segment.perm, []).append(
                            AxisUse(key, axis, offset, segment.block, segment.units)
                        )
                    offset += segment.length
        object.__setattr__(
            self, "perm_to_uses", {name: tuple(uses) for name, uses in inverse.items()}
        )

    @property
    def perm_names(self) -> list[str]:
        """The permutations solved for, in the order the spec defines them."""
        return list(self.perm_to_uses)

    @property
    def head_orders(self) -> dict[str, list[str]]:
        """Each shared head order and the nested permutations that move their heads by it."""
        orders: dict[str, list[str]] = {}
        for name, nesting in self.nested.items():
            orders.setdefault(nesting.head_order, []).append(name)
        return orders

    @property
    def perm_to_axes(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """Each permutation's (tensor, axis) pairs, whole axes or segments alike."""
        return {
            name: tuple((use.key, use.axis) for use in uses)
            for name, uses in self.perm_to_uses.items()
        }


def perm_sizes(spec: PermutationSpec, state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The number of units each permutation acts on, read off the state dict."""
    sizes = {}
    for name, (use, *_) in spec.perm_to_uses.items():
        sizes[name] = use.units if use.units is not None else state[use.key].shape[use.axis]
    return sizes


def expanded_permutation(spec: PermutationSpec, perm: Permutation) -> Permutation:
    """``perm`` with an index vector for every composite, made from its segments' permutations."""
    if not spec.composites:
        return perm
    expanded = dict(perm)
    for name, segments in spec.composites.items():
        expanded[name] = composite_indices(segments, perm)
    return expanded


def composite_indices(segments: tuple[Segment, ...], perm: Permutation) -> torch.Tensor:
    """The index vector of one composite axis: each segment's units reordered as a whole."""
    parts = []
    offset = 0
    for segment in segments:
        units = torch.arange(segment.units) if segment.perm is None else perm[segment.perm].cpu()
        within = torch.arange(segment.block)
        parts.append(offset + (units.unsqueeze(1) * segment.block + within).flatten())
        offset += segment.length
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def identity_permutation(spec: PermutationSpec, state: Mapping[str, torch.Tensor]) -> Permutation:
    """The permutation that changes nothing."""
    return {name: torch.arange(size) for name, size in perm_sizes(spec, state).items()}


def nested_indices(order: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """The index vector of a nested permutation: heads reordered by ``order`` (H), the entries
    of new head ``i`` by row ``i`` of ``within`` (H x head_size)."""
    head_size = within.shape[1]
    return (order.unsqueeze(1) * head_size + within).flatten()


def split_nested(indices: torch.Tensor, nesting: Nesting) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, within)`` of a nested permutation's index vector (:func:`nested_indices`)."""
    grid = indices.view(nesting.heads, nesting.head_size)
    return grid[:, 0] // nesting.head_size, grid % nesting.head_size


def random_permutation(
    spec: PermutationSpec, state: Mapping[str, torch.Tensor], seed: int
) -> Permutation:
    """A uniformly random permutation of every hidden unit group, reproducible from ``seed``
    (nested permutations sharing a head order move their heads alike)."""
    generator = torch.Generator().manual_seed(seed)
    perm = {}
    orders: dict[str, torch.Tensor] = {}
    for name, size in perm_sizes(spec, state).items():
        nesting = spec.nested.get(name)
        if nesting is None:
            perm[name] = torch.randperm(size, generator=generator)
            continue
        if nesting.head_order not in orders:
            orders[nesting.head_order] = torch.randperm(nesting.heads, generator=generator)
        within = torch.stack(
            [torch.randperm(nesting.head_size, generator=generator) for _ in range(nesting.heads)]
        )
        perm[name] = nested_indices(orders[nesting.head_order], within)
    return perm


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
    """Tensor ``key`` of ``state`` with ``perm`` applied on every axis but ``except_axis``
    (``perm`` holding the composites' index vectors too: :func:`expanded_permutation`)."""
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
    expanded = expanded_permutation(spec, perm)
    return {key: permuted_tensor(spec, expanded, key, state) for key in state}


def permutation_to_lists(perm: Permutation) -> dict[str, list[int]]:
    """A JSON-ready copy of ``perm``."""
    return {name: [int(i) for i in indices.tolist()] for name, indices in perm.items()}
