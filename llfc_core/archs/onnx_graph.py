"""A lab's own model, uploaded as one ``.onnx`` file: the arch ``{"name": "onnx"}``.

The file holds graph and weights. :func:`onnx_architecture_from_file` splits them: the weights
become the checkpoint's state dict (keys are the converted module's, the initializer names where
they look like state-dict keys; :mod:`llfc_core.onnx_import`), and the graph, its layers'
initializers stripped of their values (small, whatever the model's size), becomes the
:class:`OnnxArchitecture`. The arch's JSON is ``{"name": "onnx", "graph_sha256": ...}``, the
digest of the graph's structure (ops, attributes, initializer names and shapes, input shape; not
of the file's bytes), so two exports of one class are the same arch; the graph itself travels
beside the JSON (:meth:`OnnxArchitecture.from_graph_bytes`).

The model is built like a zoo model's: the converted graph traced and instrumented so that every
activation call is its own feature layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import onnx
import torch
from google.protobuf.message import DecodeError
from torch import fx, nn

from llfc_core.archs.base import Architecture, reject_unknown_fields
from llfc_core.errors import ArchitectureError
from llfc_core.onnx_import import (
    GraphSignature,
    OnnxTorchModel,
    compare_onnx_graphs,
    onnx_to_torch,
    read_onnx_model,
)
from llfc_core.onnx_import.building import strip_weights
from llfc_core.onnx_import.signature import graph_signature
from llfc_core.permutation import StateDict
from llfc_core.symmetry.derive import instrument, trace

NAME = "onnx"


@dataclass(frozen=True)
class OnnxArchitecture(Architecture):
    """An uploaded ONNX graph: ``graph`` (a serialized ModelProto whose layers' initializers hold
    no values) and ``graph_sha256``, its structure's digest, by which archs compare equal."""

    graph_sha256: str
    graph: bytes = field(compare=False, repr=False)
    sample_shape: tuple[int, ...] = field(compare=False)
    classes: int = field(compare=False)
    batch_norm: bool = field(compare=False)

    name: ClassVar[str] = NAME

    @classmethod
    def from_graph_bytes(cls, graph: bytes) -> OnnxArchitecture:
        """The arch of a graph :func:`onnx_architecture` stored (its bytes)."""
        try:
            model = onnx.load_model_from_string(graph)
        except (DecodeError, ValueError) as error:
            raise ArchitectureError("The stored ONNX graph is not an ONNX model.") from error
        with torch.device("meta"):
            converted = onnx_to_torch(model)
        return _architecture(converted, graph)

    @classmethod
    def from_json(cls, spec: Mapping[str, Any], graph: bytes | None = None) -> OnnxArchitecture:
        """``{"name": "onnx"}`` with the graph it stands for; ``graph_sha256``, when given, must
        be that graph's."""
        reject_unknown_fields(spec, {"graph_sha256"})
        if graph is None:
            raise ArchitectureError(
                'The arch {"name": "onnx"} is the model of an uploaded .onnx file: upload the '
                "file with it as a checkpoint, and name that checkpoint."
            )
        arch = cls.from_graph_bytes(graph)
        claimed = spec.get("graph_sha256")
        if claimed is not None and claimed != arch.graph_sha256:
            raise ArchitectureError(
                f"The arch's graph_sha256 {claimed!r} is not that of the uploaded ONNX graph "
                f'({arch.graph_sha256}); send {{"name": "onnx"}} alone, or the graph_sha256 '
                "of a checkpoint of this graph."
            )
        return arch

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.sample_shape

    @property
    def num_classes(self) -> int:
        return self.classes

    @property
    def has_batch_norm(self) -> bool:
        return self.batch_norm

    def signature(self) -> GraphSignature:
        """The graph's structure, which ``graph_sha256`` digests."""
        return graph_signature(onnx.load_model_from_string(self.graph), self.sample_shape)

    def source_model(self) -> nn.Module:
        """The converted graph, layers initialised by torch (the weights are the checkpoint's)."""
        return onnx_to_torch(onnx.load_model_from_string(self.graph)).module

    def build(self) -> fx.GraphModule:
        graph_module = trace(self.source_model())
        instrument(graph_module, self.symmetry().feature_sites)
        return graph_module

    def to_json(self) -> dict[str, Any]:
        return {"name": NAME, "graph_sha256": self.graph_sha256}


def compare_onnx_archs(first: OnnxArchitecture, second: OnnxArchitecture) -> None:
    """Nothing when the two graphs are the same model up to weights; else
    :class:`~llfc_core.errors.IncompatiblePairError` saying where they first differ."""
    compare_onnx_graphs(first.signature(), second.signature())


def onnx_architecture(model: onnx.ModelProto) -> tuple[OnnxArchitecture, StateDict]:
    """``model`` (read by :func:`~llfc_core.onnx_import.read_onnx_model`) as its arch and its
    weights: the converted module's state dict, float32 on the CPU."""
    converted = onnx_to_torch(model)
    stripped = strip_weights(model, set(converted.tensor_names.values()))
    arch = _architecture(converted, stripped.SerializeToString())
    state = {key: value.detach().clone() for key, value in converted.module.state_dict().items()}
    return arch, state


def onnx_architecture_from_file(
    source: bytes | Path, max_bytes: int
) -> tuple[OnnxArchitecture, StateDict]:
    """The arch and weights of an uploaded ``.onnx`` file of at most ``max_bytes`` bytes; a file
    that is no ONNX model, or one that cannot be converted, is an
    :class:`~llfc_core.errors.OnnxModelError` saying why."""
    return onnx_architecture(read_onnx_model(source, max_bytes))


def _architecture(converted: OnnxTorchModel, graph: bytes) -> OnnxArchitecture:
    batch_norm = any(
        isinstance(module, nn.modules.batchnorm._BatchNorm) for module in converted.module.modules()
    )
    return OnnxArchitecture(
        graph_sha256=converted.signature.sha256(),
        graph=graph,
        sample_shape=converted.input_shape,
        classes=converted.num_classes,
        batch_norm=batch_norm,
    )
