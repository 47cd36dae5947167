"""What each axis of each tensor in a traced graph is made of, as far as permutations go.

An axis is a :data:`Label`: a tuple of :class:`Part` s laid end to end. A part is ``units`` units
of ``block`` consecutive entries each, which either move together under one unknown permutation
(``unknown`` set) or never move (``unknown`` None): a Linear's output axis is one part; a
concatenation's output axis has one part per input; a channel axis flattened with a 7x7 map is
one part of block 49. The unknowns are the nodes of a union-find (:class:`Unknowns`): every rule
that says "these two axes must be permuted alike" unites them, and every rule that says "this
axis must not move" blocks the unknown, with the reason, which is how the derivation fails
closed.

Attention splits axes finer than one permutation: a fused query/key/value projection's outputs
are three pieces, and each piece is heads x head dimension. A class is then *refined*
(:class:`Split` into consecutive pieces, each its own class, or :class:`Heads`: a nested
permutation whose heads move by an order class shared across the attention). An axis after the
reshape into heads is a part with a ``role``: ``"heads"`` (indexes the heads of the nested class),
``"within"`` (indexes the entries within each head) or ``"stack"`` (indexes the pieces of a split
class, as timm's ``reshape(B, N, 3, heads, head_dim)`` does before ``unbind``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Part:
    """``units`` units of ``block`` entries; permuted by ``unknown``, or fixed when it is None."""

    unknown: int | None
    units: int
    block: int = 1
    role: str | None = None
    """None for units of ``unknown``; "heads", "within" or "stack" for an axis that indexes a
    refined class's heads, entries within heads, or pieces."""

    @property
    def length(self) -> int:
        return self.units * self.block


Label = tuple[Part, ...]
"""One axis of a tensor, its parts end to end."""


def fixed(length: int) -> Label:
    """An axis no permutation may touch."""
    return (Part(None, length, 1),)


def label_length(label: Label) -> int:
    return sum(part.length for part in label)


def label_unknowns(label: Label) -> list[int]:
    return [part.unknown for part in label if part.unknown is not None]


def is_fixed(label: Label) -> bool:
    return not label_unknowns(label)


def repeated_entries(label: Label, factor: int) -> Label:
    """The axis after each entry became ``factor`` consecutive entries (flattening the axes
    after it into it): every part's block grows by ``factor``."""
    if is_fixed(label):
        return fixed(label_length(label) * factor)
    return tuple(Part(part.unknown, part.units, part.block * factor, part.role) for part in label)


def concatenated(labels: list[Label]) -> Label:
    """Axes laid end to end (adjacent fixed parts merged)."""
    parts: list[Part] = []
    for label in labels:
        for part in label:
            if part.unknown is None and parts and parts[-1].unknown is None:
                parts[-1] = Part(None, parts[-1].length + part.length, 1)
            elif part.unknown is None:
                parts.append(Part(None, part.length, 1))
            else:
                parts.append(part)
    return tuple(parts)


@dataclass(frozen=True)
class Split:
    """A class whose units are consecutive pieces, each a class of its own."""

    pieces: tuple[int, ...]


@dataclass(frozen=True)
class Heads:
    """A class of heads x ``head_size`` entries, head-major: heads move by class ``order``, the
    entries within each head by one permutation per head (a nested permutation)."""

    order: int
    head_size: int


@dataclass
class Unknown:
    """One class of the union-find, as seen at its root."""

    size: int
    births: list[str] = field(default_factory=list)
    """Layers whose output units this permutation reorders (a Linear's or conv's outputs)."""
    blocked_by: str | None = None
    """Why this permutation must be the identity; None while it may move."""
    refinement: Split | Heads | None = None
    """The finer structure its units turned out to have, if any."""


class Unknowns:
    """A union-find over permutation unknowns, each class keeping its births and block reason."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._classes: dict[int, Unknown] = {}

    def new(self, size: int, birth: str | None = None) -> int:
        index = len(self._parent)
        self._parent.append(index)
        self._classes[index] = Unknown(size, [birth] if birth else [])
        return index

    def find(self, index: int) -> int:
        root = index
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[index] != root:
            self._parent[index], index = root, self._parent[index]
        return root

    def get(self, index: int) -> Unknown:
        return self._classes[self.find(index)]

    def block(self, index: int, reason: str) -> None:
        unknown = self.get(index)
        if unknown.blocked_by is None:
            unknown.blocked_by = reason
            if isinstance(unknown.refinement, Split):
                for piece in unknown.refinement.pieces:
                    self.block(piece, reason)
            elif isinstance(unknown.refinement, Heads):
                # Every nested class moving its heads by this order would move them without
                # this one's: the heads stay in place.
                self.block(unknown.refinement.order, reason)

    def unite(self, first: int, second: int, reason: str) -> None:
        """Require ``first`` and ``second`` to be one permutation; block both when their sizes
        differ (``reason`` says where)."""
        root_a, root_b = self.find(first), self.find(second)
        if root_a == root_b:
            return
        a, b = self._classes[root_a], self._classes[root_b]
        if a.size != b.size:
            self.block(root_a, reason)
            self.block(root_b, reason)
            return
        self._parent[root_b] = root_a
        a.births.extend(b.births)
        a.blocked_by = a.blocked_by or b.blocked_by
        del self._classes[root_b]
        self._unite_refinements(root_a, a.refinement, b.refinement, reason)

    def _unite_refinements(
        self, root: int, first: Split | Heads | None, second: Split | Heads | None, reason: str
    ) -> None:
        """Two classes made one: their finer structures must agree, piece by piece."""
        if first is None or second is None:
            self._classes[root].refinement = first or second
            return
        if isinstance(first, Split) and isinstance(second, Split):
            sizes = [self.get(piece).size for piece in first.pieces]
            if sizes == [self.get(piece).size for piece in second.pieces]:
                for one, other in zip(first.pieces, second.pieces, strict=True):
                    self.unite(one, other, reason)
                return
        if (
            isinstance(first, Heads)
            and isinstance(second, Heads)
            and first.head_size == second.head_size
        ):
            self.unite(first.order, second.order, reason)
            return
        self.block(root, f"{reason}: axes split into heads or pieces differently")

    def refine(self, index: int, refinement: Split | Heads, reason: str) -> Split | Heads:
        """Give ``index``'s class a finer structure (or find the one it has): the pieces or
        heads of the refinement must be what the class already has, else it is blocked."""
        root = self.find(index)
        existing = self._classes[root].refinement
        if existing is None:
            self._classes[root].refinement = refinement
            return refinement
        if (
            type(existing) is not type(refinement)
            or (
                isinstance(existing, Heads)
                and isinstance(refinement, Heads)
                and existing.head_size != refinement.head_size
            )
            or (
                isinstance(existing, Split)
                and isinstance(refinement, Split)
                and [self.get(p).size for p in existing.pieces]
                != [self.get(p).size for p in refinement.pieces]
            )
        ):
            self.block(root, f"{reason}: axes split into heads or pieces differently")
        return existing

    def refinement(self, index: int) -> Split | Heads | None:
        return self.get(index).refinement

    def is_blocked(self, index: int) -> bool:
        """Whether ``index``'s class, or a class its structure depends on, may not move."""
        unknown = self.get(index)
        if unknown.blocked_by is not None:
            return True
        if isinstance(unknown.refinement, Heads):
            return self.get(unknown.refinement.order).blocked_by is not None
        return False

    def blocked_reason(self, index: int) -> str | None:
        unknown = self.get(index)
        if unknown.blocked_by is not None:
            return unknown.blocked_by
        if isinstance(unknown.refinement, Heads):
            return self.get(unknown.refinement.order).blocked_by
        return None

    def unite_labels(self, first: Label, second: Label, reason: str) -> None:
        """Require two axes to be permuted alike, part by part. Parts that do not line up, or an
        unknown facing a fixed part, block every unknown involved: never guessed."""
        same_layout = len(first) == len(second) and all(
            a.units == b.units and a.block == b.block and a.role == b.role
            for a, b in zip(first, second, strict=True)
        )
        if not same_layout:
            self.block_label(first, reason)
            self.block_label(second, reason)
            return
        for a, b in zip(first, second, strict=True):
            if a.unknown is None or b.unknown is None:
                self.block_label((a, b), reason)
            elif a.role == "heads":
                self._unite_orders(a.unknown, b.unknown, reason)
            else:
                self.unite(a.unknown, b.unknown, reason)

    def _unite_orders(self, first: int, second: int, reason: str) -> None:
        """Two head axes line up: the heads of both nested classes move alike."""
        one, other = self.refinement(first), self.refinement(second)
        if isinstance(one, Heads) and isinstance(other, Heads):
            self.unite(one.order, other.order, reason)
        else:
            self.block(first, reason)
            self.block(second, reason)

    def block_label(self, label: Label, reason: str) -> None:
        for unknown in label_unknowns(label):
            self.block(unknown, reason)
