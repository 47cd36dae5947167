"""What every architecture provides, and the checks shared by all of them."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, ClassVar

import torch
from torch import nn

from llfc_core.errors import ArchitectureError
from llfc_core.features import feature_site_names
from llfc_core.params import check_int
from llfc_core.permutation import PermutationSpec
from llfc_core.symmetry import DerivedSymmetry, derive_symmetry
from llfc_core.tasks import CLASSIFICATION, Task

DEFAULT_MAX_PARAMS = 500_000_000
"""Largest model accepted by default; checked on the meta device before any allocation."""


class Architecture(ABC):
    """A JSON-described network: how to build it and its input. Its permutation symmetries are
    derived from the built model's graph (:mod:`llfc_core.symmetry`), never written by hand.

    Feature layers for LLFC are every ``nn.ReLU`` module in forward order (each used exactly once),
    then the logits. Condition II is measured on every ``nn.Linear`` and ``nn.Conv2d``.
    """

    name: ClassVar[str]
    traced_per_shape: ClassVar[bool] = False
    """Whether the model's graph holds for the traced input shape only (its Python code
    branches on sizes, as Hugging Face's does; see :mod:`llfc_core.archs.shape_traced`)."""

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch dimension."""

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Number of logits."""

    @abstractmethod
    def build(self) -> nn.Module:
        """A freshly initialised model on the current default device."""

    @property
    def task(self) -> Task:
        """What the model predicts, hence its loss and error and the data it reads: a class per
        example, unless the arch is a language model (:mod:`llfc_core.tasks`)."""
        return CLASSIFICATION

    def tied_tensors(self) -> dict[str, str]:
        """State-dict keys that name one tensor under two names: ``{copy: source}``. A
        checkpoint may leave the copy out; where both are given they must be equal."""
        return {}

    def discarded_keys(self, keys: Iterable[str]) -> set[str]:
        """Keys among ``keys`` that are not the model's weights and that its library drops when
        loading (buffers older releases saved), so a checkpoint holding them still loads."""
        return set()

    def random_inputs(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` random examples the model accepts, on the current default device: standard
        normal values of ``input_shape``."""
        return torch.randn((count, *self.input_shape), generator=generator)

    def permutation_spec(self) -> PermutationSpec:
        """Which tensor axes share which hidden permutation."""
        return self.symmetry().spec

    def source_model(self) -> nn.Module:
        """The model whose graph the symmetries are derived from: :meth:`build`'s, unless the
        arch builds a graph that is itself derived (a zoo model's)."""
        return self.build()

    def trainable_model(self) -> nn.Module:
        """The model a train job trains: :meth:`build`'s, unless that is a graph traced in eval
        mode, whose Python branches on the training flag (stochastic depth, dropout inside
        attention) were fixed as in eval; then the library's own model, whose state-dict keys
        include the graph's."""
        return self.build()

    def symmetry(self) -> DerivedSymmetry:
        """The spec with its report (feature sites, axes left unpermuted and why), derived
        once per arch from the model built on the meta device."""
        return _derived_symmetry(self)

    @abstractmethod
    def to_json(self) -> dict[str, Any]:
        """The canonical JSON object for this arch (defaults filled in)."""

    @property
    def has_batch_norm(self) -> bool:
        """Whether interpolated models need their BatchNorm statistics re-estimated."""
        return False

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of every state-dict tensor, computed on the meta device (no memory used)."""
        with torch.device("meta"):
            model = self.build()
        return {key: tuple(value.shape) for key, value in model.state_dict().items()}

    def feature_layers(self) -> list[str]:
        """The feature layers an analysis measures, in forward order, then ``logits``."""
        with torch.device("meta"):
            model = self.build()
        return [*feature_site_names(model), "logits"]

    def num_params(self) -> int:
        """Number of learned parameters."""
        with torch.device("meta"):
            model = self.build()
        return sum(p.numel() for p in model.parameters())


class ImageArchitecture(Architecture):
    """A network over ``in_channels`` x ``input_size`` x ``input_size`` images with ``classes``
    logits; its (frozen dataclass) subclass declares the three fields."""

    in_channels: int
    input_size: int
    classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.input_size, self.input_size)

    @property
    def num_classes(self) -> int:
        return self.classes


@lru_cache(maxsize=64)
def _derived_symmetry(arch: Architecture) -> DerivedSymmetry:
    # Archs are frozen dataclasses: equal JSON, equal key. The graph is on the meta device, so
    # a cached entry holds no weights.
    with torch.device("meta"):
        model = arch.source_model()
        example = arch.random_inputs(1)
    return derive_symmetry(
        model, arch.input_shape, example.dtype, shape_specific=arch.traced_per_shape
    )


def check_size(arch: Architecture, max_params: int) -> None:
    """Refuse an arch with more than ``max_params`` parameters before allocating anything."""
    count = arch.num_params()
    if count > max_params:
        raise ArchitectureError(
            f"The {arch.name} arch has {count:,} parameters, more than the limit of "
            f"{max_params:,}; use smaller widths."
        )


def require_int(spec: Mapping[str, Any], key: str, default: int | None, low: int, high: int) -> int:
    """Read an integer hyperparameter in [low, high] from an arch object."""
    value = spec.get(key, default)
    if value is None:
        raise ArchitectureError(f"The arch needs an integer '{key}'.")
    return check_int(value, low, high, f"The arch field '{key}'", ArchitectureError)


def require_bool(spec: Mapping[str, Any], key: str, default: bool) -> bool:
    """Read a boolean hyperparameter from an arch object."""
    value = spec.get(key, default)
    if not isinstance(value, bool):
        raise ArchitectureError(f"The arch field '{key}' must be true or false, got {value!r}.")
    return value


def require_number(
    spec: Mapping[str, Any], key: str, default: float, low: float, high: float
) -> float:
    """Read a real hyperparameter in [low, high] from an arch object."""
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ArchitectureError(
            f"The arch field '{key}' must be a number from {low} to {high}, got {value!r}."
        )
    return float(value)


def reject_unknown_fields(spec: Mapping[str, Any], allowed: set[str]) -> None:
    """Refuse fields an arch does not understand, so typos do not pass silently."""
    unknown = sorted(set(spec) - allowed - {"name"})
    if unknown:
        raise ArchitectureError(
            f"The {spec.get('name')} arch does not take {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(sorted(allowed))}."
        )


def scaled_width(base: int, multiplier: float) -> int:
    """A channel count scaled by a width multiplier, at least 1."""
    return max(1, math.floor(base * multiplier + 0.5))
