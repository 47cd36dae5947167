"""What each axis of each tensor in a traced graph is made of, as far as permutations go.

An axis is a :data:`Label`: a tuple of :class:`Part` s laid end to end. A part is ``units`` units
of ``block`` consecutive entries each, which either move together under one unknown permutation
(``unknown`` set) or never move (``unknown`` None): a Linear's output axis is one part; a
concatenation's output axis has one part per input; a channel axis flattened with a 7x7 map is
one part of block 49. The unknowns are the nodes of a union-find (:class:`Unknowns`): every rule
that says "these two axes must be permuted alike" unites them, and every rule that says "this
axis must not move" blocks the unknown, with the reason, which is how the derivation fails
closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Part:
    """``units`` units of ``block`` entries; permuted by ``unknown``, or fixed when it is None."""

    unknown: int | None
    units: int
    block: int = 1

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
    return tuple(Part(part.unknown, part.units, part.block * factor) for part in label)


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


@dataclass
class Unknown:
    """One class of the union-find, as seen at its root."""

    size: int
    births: list[str] = field(default_factory=list)
    """Layers whose output units this permutation reorders (a Linear's or conv's outputs)."""
    blocked_by: str | None = None
    """Why this permutation must be the identity; None while it may move."""


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

    def unite_labels(self, first: Label, second: Label, reason: str) -> None:
        """Require two axes to be permuted alike, part by part. Parts that do not line up, or an
        unknown facing a fixed part, block every unknown involved: never guessed."""
        same_layout = len(first) == len(second) and all(
            a.units == b.units and a.block == b.block for a, b in zip(first, second, strict=True)
        )
        if not same_layout:
            self.block_label(first, reason)
            self.block_label(second, reason)
            return
        for a, b in zip(first, second, strict=True):
            if a.unknown is not None and b.unknown is not None:
                self.unite(a.unknown, b.unknown, reason)
            else:
                self.block_label((a, b), reason)

    def block_label(self, label: Label, reason: str) -> None:
        for unknown in label_unknowns(label):
            self.block(unknown, reason)
