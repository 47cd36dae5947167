"""Capturing a model's internal features during a forward pass.

The LLFC feature layers of every arch are its feature sites, in the order the forward pass
reaches them: every elementwise activation module (ReLU, GELU, SiLU...; each called once, which
:func:`llfc_core.symmetry.derive.instrument` ensures for traced models), whose input is that
layer's pre-activation, and every :class:`ResidualTap` (a residual stream after an addition).
Condition I is measured at the activations, LLFC at every site. The layers of Condition II are
the ``nn.Linear`` and ``nn.Conv2d`` modules, whose input is the feature matrix H.

:func:`watch_features` hands each tensor to a callback the moment the forward pass produces it,
so a caller can compare it and let it go; :func:`capture_features` keeps them for the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

WEIGHTED_LAYER_TYPES = (nn.Linear, nn.Conv2d)
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Softplus,
)
"""Elementwise activations: each output unit depends on its own input unit only."""
NAMED_ACTIVATION_MODULES = {
    ("transformers.activations", name)
    for name in (
        "NewGELUActivation",
        "GELUActivation",
        "FastGELUActivation",
        "QuickGELUActivation",
        "GELUTanh",
        "PytorchGELUTanh",
        "SiLUActivation",
        "ReLUSquaredActivation",
    )
}
"""Elementwise activations of other libraries, by module and class name: importing
transformers to compare classes would cost every process seconds at start."""


TRANSPOSED_LINEAR_MODULES = {("transformers.pytorch_utils", "Conv1D")}
"""Linear layers of other libraries that store their weight transposed (inputs x outputs), by
module and class name."""


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer whose weight is stored inputs x outputs."""
    kind = type(module)
    return (kind.__module__, kind.__name__) in TRANSPOSED_LINEAR_MODULES


def is_activation_module(module: nn.Module) -> bool:
    """Whether ``module`` is an elementwise activation."""
    kind = type(module)
    return isinstance(module, ACTIVATION_MODULES) or (
        (kind.__module__, kind.__name__) in NAMED_ACTIVATION_MODULES
    )


FeatureCallback = Callable[[str, torch.Tensor, torch.Tensor], None]
"""Called with (module name, the module's input, its output)."""


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


class ResidualTap(nn.Identity):
    """Marks its input, a residual stream just after an addition, as an LLFC feature layer."""


def _in_forward_order(model: nn.Module, names: list[str]) -> list[str]:
    """``names`` in the order a traced model calls them (definition order otherwise, which the
    built-in archs keep equal to forward order)."""
    graph = getattr(model, "graph", None)
    if not isinstance(graph, fx.Graph):
        return names
    called = [str(node.target) for node in graph.nodes if node.op == "call_module"]
    position = {name: index for index, name in reversed(list(enumerate(called)))}
    return sorted(names, key=lambda name: position.get(name, len(called)))


def feature_site_names(model: nn.Module) -> list[str]:
    """Every LLFC feature layer but the logits: activations and residual taps, in forward
    order."""
    names = [
        name
        for name, module in model.named_modules()
        if is_activation_module(module) or isinstance(module, ResidualTap)
    ]
    return _in_forward_order(model, names)


def weighted_layer_names(model: nn.Module) -> list[str]:
    """Names of the model's linear maps (Linear, Conv2d, GPT-2's Conv1D) in definition order."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, WEIGHTED_LAYER_TYPES) or is_transposed_linear(module)
    ]


@contextmanager
def watch_features(
    model: nn.Module,
    *,
    relus: Iterable[str] = (),
    on_relu: FeatureCallback | None = None,
    layers: Iterable[str] = (),
    on_layer: FeatureCallback | None = None,
) -> Iterator[None]:
    """Call ``on_relu(name, pre_activation, output)`` at every named feature site and
    ``on_layer(name, H, output)`` at every named layer, during every forward pass."""
    modules = dict(model.named_modules())
    handles: list[Any] = []

    def hook(name: str, callback: FeatureCallback) -> Any:
        def forward_hook(
            module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> None:
            callback(name, inputs[0], output)

        return forward_hook

    try:
        if on_relu is not None:
            for name in relus:
                site = modules[name]
                # An in-place activation would overwrite the pre-activation it was given.
                if hasattr(site, "inplace"):
                    site.inplace = False
                handles.append(site.register_forward_hook(hook(name, on_relu)))
        if on_layer is not None:
            for name in layers:
                handles.append(modules[name].register_forward_hook(hook(name, on_layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture_features(
    model: nn.Module,
    *,
    relus: Iterable[str] = (),
    pre_activations: bool = False,
    layer_inputs: Iterable[str] = (),
) -> Iterator[Capture]:
    """Record the outputs (and optionally inputs) of the named ReLUs and the inputs of named layers.

    The capture holds references only until the next :meth:`Capture.clear`, so memory stays
    proportional to one batch.
    """
    capture = Capture()

    def keep_relu(name: str, pre_activation: torch.Tensor, output: torch.Tensor) -> None:
        capture.activations[name] = output
        if pre_activations:
            capture.pre_activations[name] = pre_activation

    def keep_layer(name: str, layer_input: torch.Tensor, output: torch.Tensor) -> None:
        capture.layer_inputs[name] = layer_input

    with watch_features(
        model, relus=relus, on_relu=keep_relu, layers=layer_inputs, on_layer=keep_layer
    ):
        yield capture


class Scratch:
    """Reusable memory for elementwise temporaries of feature maps, one flat buffer per slot.

    On CPU a fresh tensor of tens of MB costs more in page faults than the arithmetic it holds
    (glibc maps such blocks anew each time; benchmarks/RESULTS.md has a measurement), so each
    temporary is written with ``out=`` into a slot's buffer, viewed with the layout of the tensor
    it comes from. Memory: the largest tensor asked for in each slot, for the Scratch's life.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def like(self, tensor: torch.Tensor, slot: str) -> torch.Tensor:
        """An uninitialised tensor with ``tensor``'s shape, layout and dtype, in ``slot``."""
        dense = tensor.is_contiguous() or (
            tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
        )
        if not dense:
            return torch.empty_like(tensor)
        buffer = self._buffers.get(slot)
        if (
            buffer is None
            or buffer.numel() < tensor.numel()
            or buffer.dtype != tensor.dtype
            or buffer.device != tensor.device
        ):
            buffer = torch.empty(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
            self._buffers[slot] = buffer
        return buffer.as_strided(tensor.shape, tensor.stride())
