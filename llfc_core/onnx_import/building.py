"""The state of one ONNX-to-torch conversion: the torch.fx graph being built, the module tree its
layers hang in, and what each ONNX value name stands for so far.

An ONNX value is one of three things here: an activation (an ``fx.Node``, batch first), a constant
known now (a ``torch.Tensor``: initializers and ``Constant`` nodes), or a shape computed from an
activation's shape (:class:`ShapeValue`, the batch size left symbolic), the last only as far as
exporters compute shapes to flatten a tensor.

A graph may hold layers' initializers without their values (:func:`strip_weights`: the weights
of an upload live in its checkpoint, the graph is kept apart): such a layer keeps torch's own
initialisation, and a loose parameter is zeros, on the current default device (nothing is
allocated on the meta device).
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from onnx import numpy_helper
from torch import fx, nn

from llfc_core.errors import OnnxModelError


class _Batch:
    """The batch size: symbolic, whatever the graph input declares (``'batch'`` or a number)."""

    def __repr__(self) -> str:
        return "N"


BATCH = _Batch()
Dim = int | _Batch


@dataclass(frozen=True)
class ShapeValue:
    """A shape vector computed in the graph (``Shape``, ``Gather``, ``Concat``... of shapes), or
    one element of it (``scalar``)."""

    dims: tuple[Dim, ...]
    scalar: bool = False


Value = fx.Node | torch.Tensor | ShapeValue

_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")


def describe(index: int, node: onnx.NodeProto) -> str:
    """How a message names a node: its position, op and (exporter-given) name."""
    name = f" {node.name!r}" if node.name else ""
    return f"node {index} ({node.op_type}{name})"


class GraphBuilder:
    """An fx graph under construction over ``model``'s values; see the module docstring."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple[int | None, ...]]) -> None:
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.values: dict[str, Value] = {}
        self.initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        self.tensor_names: dict[str, str] = {}
        """State-dict key -> the ONNX initializer it was read from."""
        self._shapes = shapes
        self.fixed_batch: int | None = None
        self._used_initializers: set[str] = set()
        self._module_paths: set[str] = set()
        self._op_counts: dict[str, int] = {}
        for name in self.initializers:
            self.values[name] = tensor_from_proto(self.initializers[name])
        self._stripped = {name for name, proto in self.initializers.items() if is_stripped(proto)}

    def refuse(self, index: int, node: onnx.NodeProto, reason: str) -> OnnxModelError:
        return OnnxModelError(f"The ONNX graph's {describe(index, node)} {reason}")

    def activation(self, index: int, node: onnx.NodeProto, position: int) -> fx.Node:
        """Input ``position`` of the node, which must be an activation (computed from the input)."""
        value = self.input_value(index, node, position)
        if not isinstance(value, fx.Node):
            raise self.refuse(
                index,
                node,
                f"takes a constant as input {position}, where only a tensor computed from the "
                "model's input is supported.",
            )
        return value

    def constant(self, index: int, node: onnx.NodeProto, position: int) -> torch.Tensor:
        """Input ``position`` of the node, which must be a constant (initializer or Constant)."""
        value = self.input_value(index, node, position)
        if not isinstance(value, torch.Tensor):
            raise self.refuse(
                index,
                node,
                f"computes its input {position} in the graph, where only a stored constant "
                "is supported.",
            )
        return value

    def has_input(self, node: onnx.NodeProto, position: int) -> bool:
        return len(node.input) > position and node.input[position] != ""

    def input_value(self, index: int, node: onnx.NodeProto, position: int) -> Value:
        if not self.has_input(node, position):
            raise self.refuse(index, node, f"has no input {position}, which it needs.")
        name = node.input[position]
        if name not in self.values:
            raise self.refuse(
                index, node, f"reads {name!r}, which no earlier node or initializer defines."
            )
        return self.values[name]

    def shape_of(self, index: int, node: onnx.NodeProto, position: int) -> tuple[Dim, ...]:
        """The static shape of activation input ``position``, its first dimension the batch."""
        name = node.input[position]
        dims = self._shapes.get(name)
        if dims is None or not dims or any(dim is None for dim in dims[1:]):
            raise self.refuse(
                index,
                node,
                f"reads {name!r}, whose shape ONNX shape inference cannot fix; export the model "
                "with a fixed input size (only the batch dimension may be dynamic).",
            )
        return (BATCH, *(int(dim) for dim in dims[1:] if dim is not None))

    def is_batch_size(self, dim: object) -> bool:
        """Whether ``dim`` is the fixed batch size the graph input declares (exporters write it
        into reshape targets when the batch is not dynamic)."""
        return self.fixed_batch is not None and dim == self.fixed_batch

    def add_layer(
        self,
        index: int,
        node: onnx.NodeProto,
        module: nn.Module,
        tensors: dict[str, str],
    ) -> str:
        """Put ``module`` in the tree with its tensors (attribute -> initializer name) set from the
        initializers, at the module path their names give (``fc1`` for ``fc1.weight`` and
        ``fc1.bias``) or else a sanitized one, and return the path."""
        for name in tensors.values():
            if name in self._used_initializers:
                raise self.refuse(
                    index,
                    node,
                    f"uses initializer {name!r}, which another layer uses too (tied weights); "
                    "tied weights are not supported.",
                )
        prefixes = {name.rpartition(".")[0] for name in tensors.values()}
        natural = next(iter(prefixes)) if len(prefixes) == 1 else ""
        named_by_onnx = all(name == f"{natural}.{attribute}" for attribute, name in tensors.items())
        if named_by_onnx and self._is_free_path(natural):
            path = natural
        else:
            path = self._free_path(_sanitized(next(iter(tensors.values()))))
        for attribute, name in tensors.items():
            tensor = tensor_from_proto(self.initializers[name])
            current = getattr(module, attribute)
            if current.shape != tensor.shape:
                raise self.refuse(
                    index,
                    node,
                    f"has initializer {name!r} of shape {list(tensor.shape)} where "
                    f"{list(current.shape)} is needed.",
                )
            if name not in self._stripped:
                with torch.no_grad():
                    current.copy_(tensor)
            self.tensor_names[f"{path}.{attribute}"] = name
            self._used_initializers.add(name)
        self._place(path, module)
        return path

    def add_stateless(self, module: nn.Module, op_type: str) -> str:
        """Put a module without tensors (``nn.ReLU``...) in the tree at ``<op>_<k>``."""
        count = self._op_counts.get(op_type, 0)
        self._op_counts[op_type] = count + 1
        path = self._free_path(f"{op_type.lower()}_{count}")
        self._place(path, module)
        return path

    def loose_parameter(self, name: str) -> fx.Node:
        """An initializer used directly by an elementwise op, as a parameter of the root module
        at a sanitized name."""
        path = self._free_path(_sanitized(name))
        if name not in self._used_initializers:
            self.root.register_parameter(
                path, nn.Parameter(tensor_from_proto(self.initializers[name]))
            )
            self.tensor_names[path] = name
            self._used_initializers.add(name)
            self._module_paths.add(path)
        else:
            path = next(key for key, source in self.tensor_names.items() if source == name)
        return self.graph.get_attr(path)

    def call_module(self, path: str, *args: Any) -> fx.Node:
        return self.graph.call_module(path, args)

    def call_function(self, function: Any, *args: Any, **kwargs: Any) -> fx.Node:
        return self.graph.call_function(function, args, kwargs or None)

    def _is_free_path(self, path: str) -> bool:
        parts = path.split(".")
        if not all(_MODULE_PATH.fullmatch(part) and not keyword.iskeyword(part) for part in parts):
            return False
        prefixes = {".".join(parts[:end]) for end in range(1, len(parts) + 1)}
        return not any(
            used in prefixes or used.startswith(f"{path}.") for used in self._module_paths
        )

    def _free_path(self, base: str) -> str:
        path, suffix = base, 2
        while not self._is_free_path(path):
            path, suffix = f"{base}_{suffix}", suffix + 1
        return path

    def _place(self, path: str, module: nn.Module) -> None:
        parent = self.root
        *parents, leaf = path.split(".")
        for part in parents:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, module)
        self._module_paths.add(path)


def _sanitized(name: str) -> str:
    """A Python identifier for an ONNX name: ``onnx::Conv_27`` -> ``onnx__Conv_27``."""
    identifier = re.sub(r"[^0-9A-Za-z_]", "_", name)
    return identifier if re.match(r"[A-Za-z_]", identifier) else f"t_{identifier}"


def tensor_from_proto(proto: onnx.TensorProto) -> torch.Tensor:
    """An initializer or Constant as a torch tensor; floating values as float32, the precision
    every analysis runs in. A stripped initializer is zeros of its shape on the current default
    device."""
    if is_stripped(proto):
        return torch.zeros(tuple(int(dim) for dim in proto.dims))
    tensor = torch.from_numpy(numpy_helper.to_array(proto).copy())
    return tensor.float() if tensor.is_floating_point() else tensor


STRIPPED_LOCATION = "llfc:checkpoint"
"""Where a stripped initializer says its values are: in the checkpoint's state dict. Uploads
with external data are refused before conversion, so no file the service reads carries it."""


def is_stripped(proto: onnx.TensorProto) -> bool:
    """Whether the initializer's values were taken out by :func:`strip_weights`."""
    return proto.data_location == onnx.TensorProto.EXTERNAL and any(
        entry.key == "location" and entry.value == STRIPPED_LOCATION
        for entry in proto.external_data
    )


def strip_weights(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers ``names`` keep their name, type and shape but not
    their values (marked as external data at :data:`STRIPPED_LOCATION`), so the graph of a large
    model is small; the other initializers (shape targets, scalars) keep their values."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    for tensor in stripped.graph.initializer:
        if tensor.name in names:
            name, dims, data_type = tensor.name, list(tensor.dims), tensor.data_type
            tensor.Clear()
            tensor.name, tensor.data_type = name, data_type
            tensor.dims.extend(dims)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            tensor.external_data.add(key="location", value=STRIPPED_LOCATION)
    return stripped
