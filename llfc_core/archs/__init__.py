"""Architectures from their JSON description (``{"name": ..., hyperparameters...}``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llfc_core.archs.base import DEFAULT_MAX_PARAMS, Architecture, check_size
from llfc_core.archs.hf import TransformersArchitecture
from llfc_core.archs.mlp import MLP
from llfc_core.archs.onnx_graph import (
    OnnxArchitecture,
    compare_onnx_archs,
    onnx_architecture,
    onnx_architecture_from_file,
)
from llfc_core.archs.resnet import ResNet
from llfc_core.archs.vgg import VGG
from llfc_core.archs.zoo import TimmArchitecture, TorchvisionArchitecture
from llfc_core.errors import ArchitectureError

ARCHITECTURES: dict[str, Any] = {
    MLP.name: MLP,
    VGG.name: VGG,
    ResNet.name: ResNet,
    TorchvisionArchitecture.name: TorchvisionArchitecture,
    TimmArchitecture.name: TimmArchitecture,
    TransformersArchitecture.name: TransformersArchitecture,
    OnnxArchitecture.name: OnnxArchitecture,
}


def parse_arch(
    spec: Any, max_params: int = DEFAULT_MAX_PARAMS, onnx_graph: bytes | None = None
) -> Architecture:
    """Validate an arch JSON object and return the architecture it describes.

    ``{"name": "onnx"}`` is the graph of an uploaded file, which comes beside the JSON:
    ``onnx_graph``, as an :class:`OnnxArchitecture` stored it (without it, that arch is refused).

    Raises :class:`ArchitectureError` for an unknown name, bad hyperparameters, or a model larger
    than ``max_params`` (checked on the meta device, so an absurd width allocates nothing).
    """
    if not isinstance(spec, Mapping):
        raise ArchitectureError(
            'The arch must be a JSON object such as {"name": "mlp", "widths": [64, 256, 10]}.'
        )
    name = spec.get("name")
    if name not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        if name is None:
            raise ArchitectureError(f"The arch needs a 'name'; known archs are {known}.")
        raise ArchitectureError(f"Unknown arch name {name!r}; known archs are {known}.")
    arch: Architecture = (
        OnnxArchitecture.from_json(spec, onnx_graph)
        if name == OnnxArchitecture.name
        else ARCHITECTURES[name].from_json(spec)
    )
    check_size(arch, max_params)
    return arch


__all__ = [
    "ARCHITECTURES",
    "MLP",
    "VGG",
    "Architecture",
    "OnnxArchitecture",
    "ResNet",
    "TransformersArchitecture",
    "compare_onnx_archs",
    "onnx_architecture",
    "onnx_architecture_from_file",
    "parse_arch",
]
