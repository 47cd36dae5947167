"""A network's weighted layers as linear maps over rows, and the pre-activation each produces.

Least-squares fitting needs every layer as ``Y = X W^T + b`` over rows: a Linear (or GPT-2's
Conv1D, whose weight is stored inputs x outputs) maps each position of its input's last axis;
a Conv2d maps each patch of its input, unfolded as ``torch.nn.functional.unfold`` does
(C_in x kh x kw entries per patch, the order of the flattened weight; stride, padding and
dilation honoured), one row per output position.

A layer's *pre-activation* is its output, or, where a BatchNorm in eval mode reads that output
directly, the BatchNorm's output: per channel ``s * z + t`` with ``s = gamma / sqrt(var + eps)``
and ``t = beta - s * mean``, an affine map a fit can see through (:class:`ChannelAffine`). Which
BatchNorm reads which layer is observed on one forward pass (the BatchNorm's input is the very
tensor the layer returned), so no arch needs to declare it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llfc_core.features import WEIGHTED_LAYER_TYPES, is_transposed_linear, watch_features


class LayerMap(ABC):
    """One weighted layer as rows ``y = W x + b``, with ``W`` read and written as a matrix."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @property
    def weight(self) -> torch.Tensor:
        weight = self.module.weight
        assert isinstance(weight, torch.Tensor)  # every module layer_map accepts has one
        return weight

    @property
    def bias(self) -> torch.Tensor | None:
        bias = getattr(self.module, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    @abstractmethod
    def input_rows(self, layer_input: torch.Tensor) -> torch.Tensor:
        """The layer's input as rows x (M x d), one per output row."""

    @abstractmethod
    def output_rows(self, output: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like the layer's output, as rows y (M x outputs)."""

    @abstractmethod
    def weight_matrix(self) -> torch.Tensor:
        """W (outputs x d)."""

    @abstractmethod
    def set_weight_matrix(self, matrix: torch.Tensor) -> None:
        """Store ``matrix`` (outputs x d) as the layer's weight."""


class DenseMap(LayerMap):
    """A Linear, or with ``transposed`` a Conv1D (weight inputs x outputs)."""

    def __init__(self, module: nn.Module, transposed: bool) -> None:
        super().__init__(module)
        self.transposed = transposed

    def input_rows(self, layer_input: torch.Tensor) -> torch.Tensor:
        return layer_input.reshape(-1, layer_input.shape[-1])

    def output_rows(self, output: torch.Tensor) -> torch.Tensor:
        return output.reshape(-1, output.shape[-1])

    def weight_matrix(self) -> torch.Tensor:
        weight = self.weight
        return weight.T if self.transposed else weight

    def set_weight_matrix(self, matrix: torch.Tensor) -> None:
        self.weight.copy_(matrix.T if self.transposed else matrix)


class ConvMap(LayerMap):
    """A Conv2d with one group, zero padding given as numbers: its unfolded patches."""

    module: nn.Conv2d

    def input_rows(self, layer_input: torch.Tensor) -> torch.Tensor:
        conv = self.module
        patches = F.unfold(
            layer_input,
            conv.kernel_size,
            dilation=conv.dilation,
            padding=conv.padding,  # type: ignore[arg-type]  # numbers: see conv_map's checks
            stride=conv.stride,
        )
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])

    def output_rows(self, output: torch.Tensor) -> torch.Tensor:
        return output.flatten(2).transpose(1, 2).reshape(-1, output.shape[1])

    def weight_matrix(self) -> torch.Tensor:
        weight = self.module.weight
        return weight.reshape(weight.shape[0], -1)

    def set_weight_matrix(self, matrix: torch.Tensor) -> None:
        self.module.weight.copy_(matrix.reshape(self.module.weight.shape))


def layer_map(module: nn.Module) -> LayerMap | str:
    """``module`` as a :class:`LayerMap`, or why it cannot be fitted as one."""
    if is_transposed_linear(module):
        return DenseMap(module, transposed=True)
    if isinstance(module, nn.Linear):
        return DenseMap(module, transposed=False)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"a grouped convolution ({module.groups} groups) is not fitted"
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return "only convolutions with numeric zero padding are fitted"
        return ConvMap(module)
    return f"{type(module).__name__} is not a linear map the fit knows"


@dataclass(frozen=True)
class ChannelAffine:
    """A BatchNorm in eval mode as ``s * z + t`` per channel."""

    scale: torch.Tensor
    shift: torch.Tensor

    @classmethod
    def of(cls, norm: nn.modules.batchnorm._BatchNorm) -> ChannelAffine:
        assert norm.running_mean is not None and norm.running_var is not None
        scale = torch.rsqrt(norm.running_var + norm.eps)
        shift = -norm.running_mean * scale
        if norm.affine:
            scale = scale * norm.weight
            shift = shift * norm.weight + norm.bias
        return cls(scale.detach(), shift.detach())


@dataclass(frozen=True)
class Site:
    """A weighted layer called once per forward pass, and the BatchNorm reading its output."""

    layer: str
    norm: str | None

    @property
    def pre_activation(self) -> str:
        """The module whose output is the layer's pre-activation."""
        return self.norm or self.layer


def _reads_as_affine(norm: nn.Module, layer: nn.Module, output: torch.Tensor) -> bool:
    """Whether a BatchNorm applies fixed statistics to the channels of the layer's rows (the
    last axis of a Linear's 2-D output, axis 1 of a Conv2d's)."""
    return (
        isinstance(norm, nn.modules.batchnorm._BatchNorm)
        and norm.running_mean is not None
        and (output.dim() == 2 or (output.dim() == 4 and isinstance(layer, nn.Conv2d)))
    )


@torch.inference_mode()
def fitting_sites(model: nn.Module, example: torch.Tensor) -> tuple[list[Site], dict[str, str]]:
    """The weighted layers a fit can visit, in the order one forward pass of ``example`` calls
    them, and every other weighted layer with the reason it is left as it is."""
    modules = dict(model.named_modules())
    weighted = [
        name
        for name, module in modules.items()
        if isinstance(module, WEIGHTED_LAYER_TYPES) or is_transposed_linear(module)
    ]
    norms = {
        name
        for name, module in modules.items()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    }
    calls: list[str] = []
    outputs: dict[str, torch.Tensor] = {}
    read_by: dict[int, str] = {}

    def on_layer(name: str, module_input: torch.Tensor, output: torch.Tensor) -> None:
        if name in norms:
            read_by.setdefault(id(module_input), name)
            return
        calls.append(name)
        outputs[name] = output

    with watch_features(model, layers=[*weighted, *norms], on_layer=on_layer):
        model(example)
    holders: dict[int, list[str]] = {}
    for name, module in modules.items():
        for parameter in module.parameters(recurse=False):
            holders.setdefault(id(parameter), []).append(name)
    unfitted: dict[str, str] = {}
    sites = []
    for name in weighted:
        times = calls.count(name)
        found = layer_map(modules[name])
        tied = [
            holder
            for parameter in modules[name].parameters(recurse=False)
            for holder in holders[id(parameter)]
            if holder != name
        ]
        if tied:
            # Fitting it would move the other module too, after the fits that relied on it.
            unfitted[name] = f"its weights are tied to {tied[0]}'s"
        elif times != 1:
            unfitted[name] = f"it is called {times} times in one forward pass, not once"
        elif isinstance(found, str):
            unfitted[name] = found
    for name in dict.fromkeys(calls):
        if name in unfitted:
            continue
        norm = read_by.get(id(outputs[name]))
        if norm is not None and not _reads_as_affine(modules[norm], modules[name], outputs[name]):
            norm = None
        sites.append(Site(name, norm))
    return sites, unfitted
