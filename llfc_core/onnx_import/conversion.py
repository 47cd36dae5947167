"""An ONNX model (checked by :func:`~llfc_core.onnx_import.reading.read_onnx_model`) as a torch.fx
GraphModule, built node by node from :data:`~llfc_core.onnx_import.ops.OP_CONVERTERS`: no code
from the file is run, and no string from it is executed or evaluated.

Tensors keep their ONNX initializer names: a layer whose initializers look like state-dict keys
(``fc1.weight``, ``fc1.bias``, as both of torch's exporters name a module's parameters) sits at
that module path, so ``state_dict()`` has exactly those keys. Others (``onnx::Conv_27``, which the
TorchScript-based exporter gives weights it folded BatchNorm into) get a sanitized path
(``onnx__Conv_27``); :attr:`OnnxTorchModel.tensor_names` maps every key back to its initializer.
BatchNorm layers also hold ``num_batches_tracked`` (0), which ONNX does not store: it is in
``state_dict()`` but not in ``tensor_names``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from torch import fx

from llfc_core.errors import OnnxModelError
from llfc_core.onnx_import.building import GraphBuilder
from llfc_core.onnx_import.ops import OP_CONVERTERS
from llfc_core.onnx_import.signature import GraphSignature, graph_signature


@dataclass(frozen=True)
class OnnxTorchModel:
    """An ONNX model as torch: ``module`` (in eval mode), the shape of one input and of one output
    (batch dropped), the graph's signature, and ``tensor_names`` (state-dict key -> ONNX
    initializer name)."""

    module: fx.GraphModule
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    signature: GraphSignature
    tensor_names: dict[str, str]

    @property
    def num_classes(self) -> int:
        """The size of the output's last dimension: a classifier's number of classes."""
        return self.output_shape[-1]


def onnx_to_torch(model: onnx.ModelProto) -> OnnxTorchModel:
    """``model`` as a torch.fx GraphModule of standard torch modules and functions.

    Raises :class:`OnnxModelError` naming the node, input or output that cannot be converted
    exactly: an op used in a way torch has no equal for (asymmetric padding, a reshape that moves
    the batch, tied weights...), or an input with a dynamic dimension other than the batch.
    """
    shapes = _inferred_shapes(model)
    input_name, input_shape, fixed_batch = _graph_input(model, shapes)
    builder = GraphBuilder(model, shapes)
    builder.fixed_batch = fixed_batch
    builder.values[input_name] = builder.graph.placeholder(_sanitized_placeholder(input_name))
    for index, node in enumerate(model.graph.node):
        OP_CONVERTERS[node.op_type](builder, index, node)
    if len(model.graph.output) != 1:
        raise OnnxModelError(
            f"The ONNX model has {len(model.graph.output)} outputs; one (the logits) is read."
        )
    output_name = model.graph.output[0].name
    output = builder.values.get(output_name)
    if not isinstance(output, fx.Node):
        raise OnnxModelError(
            f"The ONNX model's output {output_name!r} is not computed from its input."
        )
    builder.graph.output(output)
    module = fx.GraphModule(builder.root, builder.graph).eval()
    output_dims = shapes.get(output_name)
    if not output_dims or any(dim is None for dim in output_dims[1:]):
        raise OnnxModelError(
            f"The ONNX model's output {output_name!r} has no fixed shape besides the batch."
        )
    return OnnxTorchModel(
        module=module,
        input_shape=input_shape,
        output_shape=tuple(int(dim) for dim in output_dims[1:] if dim is not None),
        signature=graph_signature(model, input_shape),
        tensor_names=dict(builder.tensor_names),
    )


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Every value's shape by ONNX's shape inference (data propagation follows the shape
    arithmetic of reshapes); a symbolic or unknown dimension is None."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as error:
        raise OnnxModelError(
            f"The ONNX graph is inconsistent: shape inference fails ({_first_line(error)})."
        ) from error
    graph = inferred.graph
    shapes: dict[str, tuple[int | None, ...]] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = tuple(
                dim.dim_value if dim.HasField("dim_value") else None
                for dim in tensor_type.shape.dim
            )
    return shapes


def _graph_input(
    model: onnx.ModelProto, shapes: dict[str, tuple[int | None, ...]]
) -> tuple[str, tuple[int, ...], int | None]:
    """The one graph input that is not an initializer: its name, shape without the batch, and
    the batch size when it is fixed rather than symbolic."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise OnnxModelError(
            f"The ONNX model has {len(inputs)} inputs; one (a batch of samples) is read."
        )
    value = inputs[0]
    if value.type.tensor_type.elem_type not in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    ):
        raise OnnxModelError(f"The ONNX model's input {value.name!r} is not a floating tensor.")
    dims = value.type.tensor_type.shape.dim
    if len(dims) < 2:
        raise OnnxModelError(
            f"The ONNX model's input {value.name!r} has {len(dims)} dimensions; a batch of "
            "samples has at least two."
        )
    for axis, dim in enumerate(dims[1:], 1):
        if not dim.HasField("dim_value"):
            raise OnnxModelError(
                f"Dimension {axis} of the ONNX model's input {value.name!r} is dynamic "
                f"({dim.dim_param or 'unnamed'}); export with a fixed sample shape (only the "
                "batch, dimension 0, may be dynamic)."
            )
    shapes[value.name] = (None, *(dim.dim_value for dim in dims[1:]))
    fixed_batch = dims[0].dim_value if dims[0].HasField("dim_value") else None
    return value.name, tuple(dim.dim_value for dim in dims[1:]), fixed_batch


def _sanitized_placeholder(name: str) -> str:
    identifier = "".join(character if character.isalnum() else "_" for character in name)
    return identifier if identifier[:1].isalpha() else f"input_{identifier}"


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
