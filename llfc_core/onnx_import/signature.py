"""What makes two ONNX graphs the same model with different weights: their nodes in order (op and
attributes, and which initializers each reads) and their initializers' names and shapes. Node and
activation names are left out: they say nothing about the function, and exports of one class
name them alike anyway."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import onnx
from onnx import helper

from llfc_core.errors import IncompatiblePairError

MAX_VALUES_IN_SIGNATURE = 16


@dataclass(frozen=True)
class NodeSignature:
    """One node: ``op_type``, its attributes as canonical text, and its inputs where they are
    initializers (computed inputs as ``None``, as their names are the exporter's)."""

    op_type: str
    name: str
    attributes: tuple[tuple[str, str], ...]
    initializer_inputs: tuple[str | None, ...]

    def same_as(self, other: NodeSignature) -> bool:
        return (self.op_type, self.attributes, self.initializer_inputs) == (
            other.op_type,
            other.attributes,
            other.initializer_inputs,
        )


@dataclass(frozen=True)
class GraphSignature:
    """A graph's structure: ``input_shape`` (batch dropped), nodes in order, and the initializers'
    ``(name, shape)`` in file order."""

    input_shape: tuple[int, ...]
    nodes: tuple[NodeSignature, ...]
    initializers: tuple[tuple[str, tuple[int, ...]], ...]

    def sha256(self) -> str:
        """sha256 of the canonical JSON of what :func:`compare_onnx_graphs` compares (node names
        left out): two graphs it finds the same have the same digest."""
        canonical = json.dumps(
            [
                self.input_shape,
                [[node.op_type, node.attributes, node.initializer_inputs] for node in self.nodes],
                self.initializers,
            ],
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def graph_signature(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> GraphSignature:
    initializer_names = {tensor.name for tensor in model.graph.initializer}
    nodes = tuple(
        NodeSignature(
            node.op_type,
            node.name,
            tuple(
                (attribute.name, _attribute_text(attribute))
                for attribute in sorted(node.attribute, key=lambda attribute: attribute.name)
            ),
            tuple(name if name in initializer_names else None for name in node.input),
        )
        for node in model.graph.node
    )
    initializers = tuple(
        (tensor.name, tuple(int(dim) for dim in tensor.dims)) for tensor in model.graph.initializer
    )
    return GraphSignature(input_shape, nodes, initializers)


def compare_onnx_graphs(first: GraphSignature, second: GraphSignature) -> None:
    """Nothing when the two graphs are the same model up to weights; else
    :class:`IncompatiblePairError` saying where they first differ."""
    if first.input_shape != second.input_shape:
        raise _differ(
            f"the first takes inputs of shape {list(first.input_shape)}, the second "
            f"{list(second.input_shape)}"
        )
    for index, (node_a, node_b) in enumerate(zip(first.nodes, second.nodes, strict=False)):
        if not node_a.same_as(node_b):
            raise _differ(
                f"node {index} is {_node_text(node_a)} in the first and {_node_text(node_b)} "
                "in the second"
            )
    if len(first.nodes) != len(second.nodes):
        index = min(len(first.nodes), len(second.nodes))
        which, extra = (
            ("first", first.nodes[index])
            if len(first.nodes) > index
            else ("second", second.nodes[index])
        )
        raise _differ(
            f"the first has {len(first.nodes)} nodes and the second {len(second.nodes)}; the "
            f"{which} goes on with node {index}, {_node_text(extra)}"
        )
    shapes_a, shapes_b = dict(first.initializers), dict(second.initializers)
    for name, shape in first.initializers:
        if name not in shapes_b:
            raise _differ(f"initializer {name!r} is in the first and not in the second")
        if shapes_b[name] != shape:
            raise _differ(
                f"initializer {name!r} has shape {list(shape)} in the first and "
                f"{list(shapes_b[name])} in the second"
            )
    for name, _shape in second.initializers:
        if name not in shapes_a:
            raise _differ(f"initializer {name!r} is in the second and not in the first")


def _differ(where: str) -> IncompatiblePairError:
    return IncompatiblePairError(f"The two ONNX models are not the same graph: {where}.")


def _node_text(node: NodeSignature) -> str:
    name = f" {node.name!r}" if node.name else ""
    attributes = ", ".join(f"{key}={value}" for key, value in node.attributes)
    weights = ", ".join(name for name in node.initializer_inputs if name is not None)
    return f"{node.op_type}{name} ({attributes}; initializers: {weights or 'none'})"


def _attribute_text(attribute: onnx.AttributeProto) -> str:
    """Canonical text of an attribute: the value; for a tensor, its dtype and shape, and its
    values when there are at most ``MAX_VALUES_IN_SIGNATURE`` (shape targets, scalars)."""
    if attribute.type == onnx.AttributeProto.TENSOR:
        array = onnx.numpy_helper.to_array(attribute.t)
        values = array.flatten().tolist() if array.size <= MAX_VALUES_IN_SIGNATURE else "..."
        return f"{array.dtype}{list(array.shape)}{values}"
    value = helper.get_attribute_value(attribute)
    return repr(value.decode() if isinstance(value, bytes) else value)
