"""The ONNX ops read, each turned into the standard torch form the rest of the engine recognises:
``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.ReLU``... modules, and ``torch.flatten``,
``torch.cat``, ``operator.add`` calls. :data:`OP_CONVERTERS` is the allowlist: an op not in it is
refused before conversion, and an op in it used in a way that has no exact torch equivalent is
refused with a sentence, never guessed.

The ops cover what ``torch.onnx.export`` writes for MLPs and small CNNs, by the TorchScript-based
exporter (``dynamo=False``) and the torch.export-based one (the default), at opset 13 or later.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence

import onnx
import torch
from onnx import helper
from torch import fx, nn

from llfc_core.onnx_import.building import (
    BATCH,
    Dim,
    GraphBuilder,
    ShapeValue,
    tensor_from_proto,
)

Converter = Callable[[GraphBuilder, int, onnx.NodeProto], None]


class Attributes:
    """A node's attributes, read with the type each op's specification gives them."""

    def __init__(self, node: onnx.NodeProto) -> None:
        self._values = {item.name: helper.get_attribute_value(item) for item in node.attribute}

    def has(self, name: str) -> bool:
        return name in self._values

    def ints(self, name: str, default: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(value) for value in self._values.get(name, default))

    def int(self, name: str, default: int) -> int:
        return int(self._values.get(name, default))

    def float(self, name: str, default: float) -> float:
        return float(self._values.get(name, default))

    def text(self, name: str, default: str) -> str:
        value = self._values.get(name, default)
        return value.decode() if isinstance(value, bytes) else str(value)


def _set_output(builder: GraphBuilder, node: onnx.NodeProto, value: fx.Node | ShapeValue) -> None:
    builder.values[node.output[0]] = value


def _symmetric_pads(
    builder: GraphBuilder, index: int, node: onnx.NodeProto, rank: int
) -> tuple[int, ...]:
    attributes = Attributes(node)
    if attributes.text("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise builder.refuse(
            index,
            node,
            "pads with auto_pad SAME, which has no fixed torch padding; export it "
            "with explicit padding.",
        )
    pads = list(attributes.ints("pads", [0] * 2 * rank))
    if pads[:rank] != pads[rank:]:
        raise builder.refuse(
            index,
            node,
            f"pads asymmetrically ({pads}), which torch's layers cannot; pad symmetrically.",
        )
    return tuple(pads[:rank])


def _gemm(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    attributes = Attributes(node)
    x = builder.activation(index, node, 0)
    weight = builder.constant(index, node, 1)
    layout = (
        attributes.float("alpha", 1.0),
        attributes.float("beta", 1.0),
        attributes.int("transA", 0),
        attributes.int("transB", 0),
    )
    if layout != (1.0, 1.0, 0, 1) or weight.dim() != 2:
        raise builder.refuse(
            index,
            node,
            "is not the y = x W^T + b of nn.Linear (alpha 1, beta 1, transA 0, transB 1, a 2-D "
            f"weight; it has alpha, beta, transA, transB = {layout}).",
        )
    tensors = {"weight": node.input[1]}
    if builder.has_input(node, 2):
        if builder.constant(index, node, 2).shape != (weight.shape[0],):
            raise builder.refuse(index, node, "has a bias that is not one value per output.")
        tensors["bias"] = node.input[2]
    for name in tensors.values():
        if name not in builder.initializers:
            raise builder.refuse(
                index, node, f"takes its weights from {name!r}, not an initializer."
            )
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in tensors)
    path = builder.add_layer(index, node, linear, tensors)
    _set_output(builder, node, builder.call_module(path, x))


def _conv(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    attributes = Attributes(node)
    x = builder.activation(index, node, 0)
    weight = builder.constant(index, node, 1)
    # Typed loosely: torch types each layer's sizes as tuples of its own length.
    layers: dict[int, Callable[..., nn.Module]] = {3: nn.Conv1d, 4: nn.Conv2d}
    if weight.dim() not in layers:
        raise builder.refuse(index, node, "is not a 1-D or 2-D convolution.")
    rank = weight.dim() - 2
    kernel = tuple(weight.shape[2:])
    if attributes.ints("kernel_shape", kernel) != kernel:
        raise builder.refuse(index, node, "has a kernel_shape that differs from its weight's.")
    groups = attributes.int("group", 1)
    tensors = {"weight": node.input[1]}
    if builder.has_input(node, 2):
        tensors["bias"] = node.input[2]
    for name in tensors.values():
        if name not in builder.initializers:
            raise builder.refuse(
                index, node, f"takes its weights from {name!r}, not an initializer."
            )
    conv = layers[weight.dim()](
        weight.shape[1] * groups,
        weight.shape[0],
        kernel,
        stride=attributes.ints("strides", [1] * rank),
        padding=_symmetric_pads(builder, index, node, rank),
        dilation=attributes.ints("dilations", [1] * rank),
        groups=groups,
        bias="bias" in tensors,
    )
    path = builder.add_layer(index, node, conv, tensors)
    _set_output(builder, node, builder.call_module(path, x))


def _batch_norm(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    """Both forms: inference (one output) and ``training_mode=1`` (the TorchScript exporter's
    training-mode export, whose running-statistics outputs no node reads). ONNX updates
    ``running = running * momentum + batch * (1 - momentum)``, torch ``running * (1 - momentum)
    + batch * momentum``, so torch's momentum is 1 minus ONNX's (rounded to 6 decimals, undoing
    float32 storage: 0.9 is stored as 0.8999999762)."""
    attributes = Attributes(node)
    x = builder.activation(index, node, 0)
    rank = len(builder.shape_of(index, node, 0))
    layers: dict[int, type[nn.BatchNorm1d] | type[nn.BatchNorm2d]] = {
        2: nn.BatchNorm1d,
        3: nn.BatchNorm1d,
        4: nn.BatchNorm2d,
    }
    if rank not in layers:
        raise builder.refuse(index, node, f"normalizes a {rank}-D tensor; 2-D to 4-D are read.")
    names = {
        attribute: node.input[position]
        for position, attribute in enumerate(("weight", "bias", "running_mean", "running_var"), 1)
    }
    if any(name not in builder.initializers for name in names.values()) or len(node.input) != 5:
        raise builder.refuse(
            index, node, "does not take its scale, bias, mean and variance from initializers."
        )
    momentum = 1.0 - attributes.float("momentum", 0.9)
    norm = layers[rank](
        builder.constant(index, node, 1).numel(),
        eps=attributes.float("epsilon", 1e-5),
        momentum=round(momentum, 6),
    )
    path = builder.add_layer(index, node, norm, names)
    _set_output(builder, node, builder.call_module(path, x))


def _activation_module(make: Callable[[Attributes], nn.Module]) -> Converter:
    def convert(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
        x = builder.activation(index, node, 0)
        path = builder.add_stateless(make(Attributes(node)), node.op_type)
        _set_output(builder, node, builder.call_module(path, x))

    return convert


def _gelu(attributes: Attributes) -> nn.Module:
    return nn.GELU(approximate=attributes.text("approximate", "none"))


def _softmax(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    axis = Attributes(node).int("axis", -1)
    x = builder.activation(index, node, 0)
    if axis == 0 or axis == -len(builder.shape_of(index, node, 0)):
        raise builder.refuse(index, node, "takes the softmax across the batch.")
    path = builder.add_stateless(nn.Softmax(dim=axis), node.op_type)
    _set_output(builder, node, builder.call_module(path, x))


def _pool(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    attributes = Attributes(node)
    x = builder.activation(index, node, 0)
    kernel = attributes.ints("kernel_shape", ())
    if len(kernel) != 2 or attributes.int("storage_order", 0) != 0:
        raise builder.refuse(index, node, "is not a 2-D pooling of an NCHW tensor.")
    stride = _pair(attributes.ints("strides", [1, 1]))
    padding = _pair(_symmetric_pads(builder, index, node, 2))
    ceil_mode = bool(attributes.int("ceil_mode", 0))
    pool: nn.Module
    if node.op_type == "MaxPool":
        dilation = attributes.ints("dilations", [1, 1])
        pool = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    else:
        if attributes.ints("dilations", [1, 1]) != (1, 1):
            raise builder.refuse(index, node, "is a dilated average pooling, which torch lacks.")
        include_pad = bool(attributes.int("count_include_pad", 0))
        pool = nn.AvgPool2d(
            _pair(kernel), stride, padding, ceil_mode, count_include_pad=include_pad
        )
    path = builder.add_stateless(pool, node.op_type)
    _set_output(builder, node, builder.call_module(path, x))


def _pair(values: tuple[int, ...]) -> tuple[int, int]:
    return values[0], values[1]


def _global_average_pool(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    x = builder.activation(index, node, 0)
    if len(builder.shape_of(index, node, 0)) != 4:
        raise builder.refuse(index, node, "pools a tensor that is not NCHW.")
    path = builder.add_stateless(nn.AdaptiveAvgPool2d(1), "GlobalAveragePool")
    _set_output(builder, node, builder.call_module(path, x))


def _reduce_mean(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    """Only the spatial mean of an NCHW tensor (how the torch.export-based exporter writes
    ``adaptive_avg_pool2d(x, 1)``): ``nn.AdaptiveAvgPool2d(1)``, flattened if keepdims is 0."""
    attributes = Attributes(node)
    x = builder.activation(index, node, 0)
    rank = len(builder.shape_of(index, node, 0))
    if builder.has_input(node, 1):
        axes = [int(axis) for axis in builder.constant(index, node, 1).tolist()]
    else:
        axes = list(attributes.ints("axes", []))
    if rank != 4 or sorted(axis % rank for axis in axes) != [2, 3]:
        raise builder.refuse(
            index, node, f"averages over axes {axes}; only the spatial mean of NCHW is read."
        )
    pooled = builder.call_module(
        builder.add_stateless(nn.AdaptiveAvgPool2d(1), "GlobalAveragePool"), x
    )
    if attributes.int("keepdims", 1) == 0:
        pooled = builder.call_function(torch.flatten, pooled, 1)
    _set_output(builder, node, pooled)


def _flatten(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    x = builder.activation(index, node, 0)
    if Attributes(node).int("axis", 1) != 1:
        raise builder.refuse(index, node, "flattens at an axis other than 1 (after the batch).")
    _set_output(builder, node, builder.call_function(torch.flatten, x, 1))


def _reshape(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    """A reshape that keeps the batch first: ``torch.flatten(x, 1)`` when it flattens all but
    the batch, else ``torch.reshape`` to ``(-1, *rest)``. The target's first entry must be the
    batch: computed from the input's shape, -1, 0 (copy, unless allowzero), or the fixed batch
    size the graph input declares."""
    data = builder.input_value(index, node, 0)
    if not isinstance(data, fx.Node):
        _reshape_constant(builder, index, node, data)
        return
    x = builder.activation(index, node, 0)
    shape = builder.shape_of(index, node, 0)
    value = builder.input_value(index, node, 1)
    if isinstance(value, torch.Tensor):
        target: tuple[Dim, ...] = tuple(int(dim) for dim in value.tolist())
    elif isinstance(value, ShapeValue) and not value.scalar:
        target = value.dims
    else:
        raise builder.refuse(index, node, "reshapes to a shape computed in an unsupported way.")
    allow_zero = bool(Attributes(node).int("allowzero", 0))
    features = math.prod(dim for dim in shape[1:] if isinstance(dim, int))
    first, rest = (target[0], list(target[1:])) if target else (None, [])
    rest = [
        shape[axis + 1] if dim == 0 and not allow_zero else dim for axis, dim in enumerate(rest)
    ]
    known = math.prod(dim for dim in rest if isinstance(dim, int) and dim != -1)
    unknown = sum(dim == -1 for dim in rest)
    batch_first = first is BATCH or (first == 0 and not allow_zero) or builder.is_batch_size(first)
    fits = (batch_first and unknown == 0 and known == features) or (
        batch_first and unknown == 1 and features % known == 0
    )
    if first == -1 and unknown == 0 and known == features:
        fits = True
    if not fits or any(dim is BATCH for dim in rest):
        raise builder.refuse(
            index,
            node,
            f"reshapes {list(shape)} to {list(target)}, which does not keep the batch as the "
            "first dimension.",
        )
    sizes = [features // known if dim == -1 else dim for dim in rest]
    if len(rest) == 1 and len(shape) > 2:
        _set_output(builder, node, builder.call_function(torch.flatten, x, 1))
    else:
        _set_output(builder, node, builder.call_function(torch.reshape, x, (-1, *sizes)))


def _reshape_constant(
    builder: GraphBuilder, index: int, node: onnx.NodeProto, data: torch.Tensor | ShapeValue
) -> None:
    """Shape arithmetic the torch.export-based exporter leaves unfolded (``optimize=False``):
    a constant or a shape element made a vector."""
    target = [int(dim) for dim in builder.constant(index, node, 1).tolist()]
    if isinstance(data, torch.Tensor):
        builder.values[node.output[0]] = data.reshape(target)
    elif len(data.dims) == 1 and target in ([-1], [1]):
        builder.values[node.output[0]] = ShapeValue(data.dims)
    else:
        raise builder.refuse(index, node, f"reshapes a shape to {target}.")


def _transpose(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    x = builder.activation(index, node, 0)
    rank = len(builder.shape_of(index, node, 0))
    permutation = list(Attributes(node).ints("perm", range(rank - 1, -1, -1)))
    if permutation[0] != 0:
        raise builder.refuse(index, node, "moves the batch dimension.")
    _set_output(builder, node, builder.call_function(torch.permute, x, tuple(permutation)))


def _concat(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    axis = Attributes(node).int("axis", 0)
    values = [builder.input_value(index, node, position) for position in range(len(node.input))]
    if all(isinstance(value, fx.Node) for value in values):
        if axis == 0 or axis == -len(builder.shape_of(index, node, 0)):
            raise builder.refuse(index, node, "concatenates along the batch.")
        _set_output(builder, node, builder.call_function(torch.cat, values, axis))
        return
    dims: list[Dim] = []
    for value in values:
        if isinstance(value, ShapeValue) and not value.scalar:
            dims.extend(value.dims)
        elif isinstance(value, torch.Tensor) and value.dim() == 1 and not value.is_floating_point():
            dims.extend(int(dim) for dim in value.tolist())
        else:
            raise builder.refuse(
                index, node, "concatenates constants with tensors computed from the input."
            )
    _set_output(builder, node, ShapeValue(tuple(dims)))


def _identity(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    builder.values[node.output[0]] = builder.input_value(index, node, 0)


def _dropout(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    x = builder.activation(index, node, 0)
    ratio = (
        float(builder.constant(index, node, 1))
        if builder.has_input(node, 1)
        else Attributes(node).float("ratio", 0.5)
    )
    path = builder.add_stateless(nn.Dropout(ratio), node.op_type)
    _set_output(builder, node, builder.call_module(path, x))


def _constant(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    attribute = node.attribute[0]
    if attribute.name == "value":
        builder.values[node.output[0]] = tensor_from_proto(attribute.t)
        return
    value = helper.get_attribute_value(attribute)
    if attribute.name not in ("value_float", "value_floats", "value_int", "value_ints"):
        raise builder.refuse(index, node, f"holds a {attribute.name}, which is not read.")
    builder.values[node.output[0]] = torch.tensor(value)


def _shape(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    builder.activation(index, node, 0)
    attributes = Attributes(node)
    dims = builder.shape_of(index, node, 0)
    end = attributes.int("end", len(dims)) if attributes.has("end") else len(dims)
    _set_output(builder, node, ShapeValue(dims[attributes.int("start", 0) : end]))


def _shape_operand(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> ShapeValue:
    value = builder.input_value(index, node, 0)
    if not isinstance(value, ShapeValue):
        raise builder.refuse(
            index, node, "is read only where it computes a shape from a tensor's Shape."
        )
    return value


def _gather(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    shape = _shape_operand(builder, index, node)
    indices = builder.constant(index, node, 1)
    picked = tuple(shape.dims[int(position)] for position in indices.flatten().tolist())
    _set_output(builder, node, ShapeValue(picked, scalar=indices.dim() == 0))


def _squeeze(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    shape = _shape_operand(builder, index, node)
    if shape.scalar or len(shape.dims) != 1:
        raise builder.refuse(index, node, "squeezes a shape of more than one value.")
    _set_output(builder, node, ShapeValue(shape.dims, scalar=True))


def _unsqueeze(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    shape = _shape_operand(builder, index, node)
    if not shape.scalar:
        raise builder.refuse(index, node, "unsqueezes a shape vector.")
    _set_output(builder, node, ShapeValue(shape.dims))


def _elementwise(function: Callable[[object, object], object]) -> Converter:
    """Add, Sub, Mul, Div: between activations, or with a constant: a one-value constant as a
    Python number (the Erf form of GELU, scalings), a larger one as a parameter of the root."""

    def convert(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
        operands: list[fx.Node | float] = []
        for position in (0, 1):
            value = builder.input_value(index, node, position)
            if isinstance(value, fx.Node):
                operands.append(value)
            elif isinstance(value, ShapeValue):
                raise builder.refuse(index, node, "does arithmetic on shapes.")
            elif value.numel() == 1:
                operands.append(float(value.item()))
            elif node.input[position] in builder.initializers:
                operands.append(builder.loose_parameter(node.input[position]))
            else:
                raise builder.refuse(index, node, "takes a constant that is no initializer.")
        if not any(isinstance(operand, fx.Node) for operand in operands):
            raise builder.refuse(index, node, "computes on constants only.")
        _set_output(builder, node, builder.call_function(function, *operands))

    return convert


def _matmul(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    if not builder.has_input(node, 1) or node.input[1] in builder.initializers:
        raise builder.refuse(
            index,
            node,
            "multiplies by a stored weight (a Linear layer applied to an input of more than two "
            "dimensions); only products of two computed tensors are read. Flatten the input of "
            "Linear layers to two dimensions before exporting.",
        )
    left = builder.activation(index, node, 0)
    right = builder.activation(index, node, 1)
    _set_output(builder, node, builder.call_function(operator.matmul, left, right))


def _erf(builder: GraphBuilder, index: int, node: onnx.NodeProto) -> None:
    _set_output(builder, node, builder.call_function(torch.erf, builder.activation(index, node, 0)))


OP_CONVERTERS: dict[str, Converter] = {
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Conv": _conv,
    "BatchNormalization": _batch_norm,
    "Relu": _activation_module(lambda _: nn.ReLU()),
    "LeakyRelu": _activation_module(
        lambda attributes: nn.LeakyReLU(attributes.float("alpha", 0.01))
    ),
    "Sigmoid": _activation_module(lambda _: nn.Sigmoid()),
    "Tanh": _activation_module(lambda _: nn.Tanh()),
    "Gelu": _activation_module(_gelu),
    "Erf": _erf,
    "Softmax": _softmax,
    "Add": _elementwise(operator.add),
    "Sub": _elementwise(operator.sub),
    "Mul": _elementwise(operator.mul),
    "Div": _elementwise(operator.truediv),
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _global_average_pool,
    "ReduceMean": _reduce_mean,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Concat": _concat,
    "Identity": _identity,
    "Dropout": _dropout,
    "Constant": _constant,
    "Shape": _shape,
    "Gather": _gather,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
}
"""Every op read, and how: the allowlist."""

SUPPORTED_OPS = frozenset(OP_CONVERTERS)
