"""Datasets: in-memory arrays ``x`` (N x ...) and integer labels ``y`` (N,), read in batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from llfc_core.errors import DatasetError

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class ArrayDataset:
    """Examples ``x`` (float32, N x ...) with class labels ``y`` (int64, N)."""

    x: torch.Tensor
    y: torch.Tensor
    name: str = "arrays"

    def __post_init__(self) -> None:
        if self.x.ndim < 2:
            raise DatasetError("The array 'x' must have a batch dimension and features (N x ...).")
        if self.y.ndim != 1 or self.y.shape[0] != self.x.shape[0]:
            raise DatasetError(
                f"The array 'y' must be one label per example: x has {self.x.shape[0]} examples, "
                f"y has shape {tuple(self.y.shape)}."
            )

    @property
    def num_examples(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(self.y.max().item()) + 1 if self.num_examples else 0

    def limit(self, max_examples: int | None) -> ArrayDataset:
        """The first ``max_examples`` examples (all when None)."""
        if max_examples is None or max_examples >= self.num_examples:
            return self
        return ArrayDataset(self.x[:max_examples], self.y[:max_examples], self.name)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive batches in a fixed order (analysis is deterministic)."""
        for start in range(0, self.num_examples, batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]

    def shuffled_batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in an order drawn from ``generator`` (training)."""
        order = torch.randperm(self.num_examples, generator=generator)
        for start in range(0, self.num_examples, batch_size):
            index = order[start : start + batch_size]
            yield self.x[index], self.y[index]

    def num_batches(self, batch_size: int) -> int:
        return (self.num_examples + batch_size - 1) // batch_size


def digits(split: str = "train") -> ArrayDataset:
    """scikit-learn's bundled 8x8 handwritten digits, flattened to 64 features in [0, 1].

    The train/test split is fixed (seeded), so every run sees the same examples.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise DatasetError(f"The split must be 'train' or 'test', got {split!r}.")
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(y))
    num_test = round(len(y) * DIGITS_TEST_FRACTION)
    index = order[num_test:] if split == "train" else order[:num_test]
    return ArrayDataset(torch.from_numpy(x[index]), torch.from_numpy(y[index]), f"digits-{split}")
