"""Capturing a model's internal features during a forward pass.

The LLFC feature layers of every arch are its ``nn.ReLU`` modules (each used once), in the order
the forward pass reaches them; the input of a ReLU is that layer's pre-activation. The layers of
Condition II are the ``nn.Linear`` and ``nn.Conv2d`` modules, whose input is the feature matrix H.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

WEIGHTED_LAYER_TYPES = (nn.Linear, nn.Conv2d)


@dataclass
class Capture:
    """Tensors seen in one forward pass, keyed by module name, in forward order."""

    pre_activations: dict[str, torch.Tensor] = field(default_factory=dict)
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    layer_inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def clear(self) -> None:
        self.pre_activations.clear()
        self.activations.clear()
        self.layer_inputs.clear()


def relu_names(model: nn.Module) -> list[str]:
    """Names of the model's ReLU modules in definition order."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]


def weighted_layer_names(model: nn.Module) -> list[str]:
    """Names of the model's Linear and Conv2d modules in definition order."""
    return [
        name for name, module in model.named_modules() if isinstance(module, WEIGHTED_LAYER_TYPES)
    ]


@contextmanager
def capture_features(
    model: nn.Module,
    *,
    relus: Iterable[str] = (),
    pre_activations: bool = False,
    layer_inputs: Iterable[str] = (),
) -> Iterator[Capture]:
    """Record the outputs (and optionally inputs) of the named ReLUs and the inputs of named layers.

    The hooks hold references only until the next :meth:`Capture.clear`, so memory stays
    proportional to one batch.
    """
    capture = Capture()
    modules = dict(model.named_modules())
    handles: list[Any] = []

    def relu_hook(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            capture.activations[name] = output
            if pre_activations:
                capture.pre_activations[name] = inputs[0]

        return hook

    def input_hook(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            capture.layer_inputs[name] = inputs[0]

        return hook

    try:
        for name in relus:
            relu = modules[name]
            # An in-place ReLU would overwrite the pre-activation it was given.
            relu.inplace = False  # type: ignore[assignment]
            handles.append(relu.register_forward_hook(relu_hook(name)))
        for name in layer_inputs:
            handles.append(modules[name].register_forward_pre_hook(input_hook(name)))
        yield capture
    finally:
        for handle in handles:
            handle.remove()
