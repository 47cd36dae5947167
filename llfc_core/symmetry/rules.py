"""What each op of a traced graph requires of the permutations of its inputs and outputs.

A rule reads the labels of an op's inputs and returns the labels of its output, uniting axes
that must be permuted alike and blocking axes that must not move. Only ops listed here are
understood; every other op blocks every permutation that reaches it (:func:`unknown_op`), so a
derived spec is never a guess. Rules assume the batch on axis 0 and, for convolutions, pooling
and normalisation, channels on axis 1 (PyTorch's layout).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from llfc_core.features import is_activation_module, is_transposed_linear
from llfc_core.symmetry.attention import (
    matrix_product,
    merged_heads,
    multihead_attention,
    pieces_of,
    scaled_dot_product_attention,
    selected,
    split_into_heads,
)
from llfc_core.symmetry.labels import (
    Label,
    Part,
    concatenated,
    fixed,
    is_fixed,
    label_length,
    repeated_entries,
)

if TYPE_CHECKING:
    from llfc_core.symmetry.derive import Walk


class TensorLabels:
    """The labels of a tensor's axes, in order."""

    def __init__(self, labels: Sequence[Label]) -> None:
        self.labels = tuple(labels)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(label_length(label) for label in self.labels)


Rule = Callable[["Walk", fx.Node, tuple[Any, ...], dict[str, Any]], Any]


PASS_THROUGH_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
"""Pooling over positions, channel by channel."""

ACTIVATION_FUNCTIONS: dict[Any, type[nn.Module]] = {
    torch.relu: nn.ReLU,
    F.relu: nn.ReLU,
    F.relu6: nn.ReLU6,
    F.gelu: nn.GELU,
    F.silu: nn.SiLU,
    torch.sigmoid: nn.Sigmoid,
    F.hardswish: nn.Hardswish,
    F.hardsigmoid: nn.Hardsigmoid,
    torch.tanh: nn.Tanh,
    F.leaky_relu: nn.LeakyReLU,
    F.elu: nn.ELU,
    F.mish: nn.Mish,
}
"""Functional activations, and the module a call of each becomes when its output is measured."""
ACTIVATION_METHODS = {"relu": nn.ReLU, "relu_": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}

PASS_THROUGH_FUNCTIONS: set[Any] = {F.dropout, torch.clone, torch.Tensor.contiguous}
PASS_THROUGH_METHODS = {"contiguous", "clone", "float", "detach", "to", "type_as"}
ELEMENTWISE_FUNCTIONS: set[Any] = {
    operator.pow,
    torch.pow,
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
ELEMENTWISE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow"}
MATRIX_PRODUCT_FUNCTIONS: set[Any] = {operator.matmul, torch.matmul, torch.bmm}
ATTENTION_FUNCTIONS: set[Any] = {F.scaled_dot_product_attention}
TENSOR_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda"}
RESIDUAL_FUNCTIONS: set[Any] = {operator.add, operator.iadd, torch.add}
POOL_FUNCTIONS: set[Any] = {
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
}
PASS_THROUGH_FUNCTION_NAMES = {("torchvision.ops.stochastic_depth", "stochastic_depth")}
"""Pass-through functions of other libraries, by module and name: importing torchvision to
compare with its function would cost every process a second at start."""


def _passes_through(target: Any) -> bool:
    if target in PASS_THROUGH_FUNCTIONS:
        return True
    name = (getattr(target, "__module__", None), getattr(target, "__name__", None))
    return name in PASS_THROUGH_FUNCTION_NAMES


def tensor_args(values: Sequence[Any]) -> list[TensorLabels]:
    """Every tensor among ``values``, inside lists and tuples too."""
    found: list[TensorLabels] = []
    for value in values:
        if isinstance(value, TensorLabels):
            found.append(value)
        elif isinstance(value, list | tuple):
            found.extend(tensor_args(value))
        elif isinstance(value, dict):
            found.extend(tensor_args(list(value.values())))
    return found


def unknown_op(walk: Walk, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """An op no rule covers: every permutation reaching it stays the identity."""
    reason = f"{walk.describe(node)}: an op the rules do not know"
    for value in tensor_args([*args, *kwargs.values()]):
        for label in value.labels:
            walk.unknowns.block_label(label, reason)
    return walk.fixed_output(node)


def _dim(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def _argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any
) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _channel(walk: Walk, node: fx.Node, value: Any) -> TensorLabels | None:
    """``value`` when it is a batched tensor with a channel axis (rank >= 2), else None."""
    if isinstance(value, TensorLabels) and len(value.labels) >= 2:
        return value
    return None


# --- modules ---------------------------------------------------------------------------------


def linear(walk: Walk, node: fx.Node, module: nn.Linear, x: TensorLabels) -> TensorLabels:
    path = str(node.target)
    walk.bind(path, "weight", 1, x.labels[-1], f"{path} (Linear)")
    units = walk.birth(module.out_features, path)
    walk.bind(path, "weight", 0, units, f"{path} (Linear)")
    if module.bias is not None:
        walk.bind(path, "bias", 0, units, f"{path} (Linear)")
    return TensorLabels([*x.labels[:-1], units])


def embedding(walk: Walk, node: fx.Node, module: nn.Embedding, x: TensorLabels) -> TensorLabels:
    """A lookup table: row ``i`` is the vector of token ``i`` (the vocabulary never moves);
    its columns are born units, like a Linear's outputs."""
    path = str(node.target)
    units = walk.birth(module.embedding_dim, path)
    walk.bind(path, "weight", 1, units, f"{path} (Embedding)")
    return TensorLabels([*x.labels, units])


def transposed_linear(walk: Walk, node: fx.Node, module: nn.Module, x: TensorLabels) -> Any:
    """Hugging Face's ``Conv1D`` (GPT-2): a Linear whose weight is stored inputs x outputs."""
    path = str(node.target)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return unknown_op(walk, node, (x,), {})
    walk.bind(path, "weight", 0, x.labels[-1], f"{path} (Conv1D)")
    units = walk.birth(int(weight.shape[1]), path)
    walk.bind(path, "weight", 1, units, f"{path} (Conv1D)")
    if getattr(module, "bias", None) is not None:
        walk.bind(path, "bias", 0, units, f"{path} (Conv1D)")
    return TensorLabels([*x.labels[:-1], units])


def convolution(
    walk: Walk, node: fx.Node, module: nn.modules.conv._ConvNd, x: TensorLabels
) -> TensorLabels:
    path = str(node.target)
    spatial = [fixed(size) for size in walk.output_shape(node)[2:]]
    channels = x.labels[1]
    groups = module.groups
    if groups == 1:
        walk.bind(path, "weight", 1, channels, f"{path} (convolution)")
        units = walk.birth(module.out_channels, path)
    elif groups == module.in_channels and module.out_channels == module.in_channels:
        # Depthwise: output channel c reads input channel c only, so both move together.
        units = channels
    else:
        reason = f"{path}: a grouped convolution (groups={groups}) ties channels in groups"
        walk.unknowns.block_label(channels, reason)
        units = walk.birth(module.out_channels, path)
        walk.unknowns.block_label(units, reason)
    walk.bind(path, "weight", 0, units, f"{path} (convolution)")
    if module.bias is not None:
        walk.bind(path, "bias", 0, units, f"{path} (convolution)")
    return TensorLabels([x.labels[0], units, *spatial])


def batch_norm(
    walk: Walk, node: fx.Node, module: nn.modules.batchnorm._NormBase, x: TensorLabels
) -> TensorLabels:
    path = str(node.target)
    for tensor in ("weight", "bias", "running_mean", "running_var"):
        if getattr(module, tensor, None) is not None:
            walk.bind(path, tensor, 0, x.labels[1], f"{path} (BatchNorm)")
    walk.statistics(path)
    return x


def layer_norm(
    walk: Walk, node: fx.Node, module: nn.LayerNorm | nn.RMSNorm, x: TensorLabels
) -> TensorLabels:
    """LayerNorm or RMSNorm: statistics over the normalised axes ignore their order; the
    per-unit gain (and bias) follow the units."""
    path = str(node.target)
    normalized = len(module.normalized_shape)
    kind = type(module).__name__
    for index, label in enumerate(x.labels[-normalized:]):
        for tensor in ("weight", "bias"):
            if getattr(module, tensor, None) is not None:
                walk.bind(path, tensor, index, label, f"{path} ({kind})")
    return x


def group_norm(walk: Walk, node: fx.Node, module: nn.GroupNorm, x: TensorLabels) -> TensorLabels:
    path = str(node.target)
    channels = x.labels[1]
    if module.num_groups not in (1, module.num_channels):
        # Statistics per group of channels: only permutations that keep the groups would do.
        walk.unknowns.block_label(
            channels, f"{path}: GroupNorm with {module.num_groups} groups ties channels in groups"
        )
        return x
    if module.affine:
        for tensor in ("weight", "bias"):
            walk.bind(path, tensor, 0, channels, f"{path} (GroupNorm)")
    return x


def pooled(walk: Walk, node: fx.Node, x: TensorLabels) -> TensorLabels:
    """Pooling over positions: channels (axis 1) kept, the positions fixed."""
    shape = walk.output_shape(node)
    return TensorLabels([*x.labels[:2], *(fixed(size) for size in shape[2:])])


def module_rule(walk: Walk, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    module = walk.module(str(node.target))
    x = args[0] if args else None
    batched = _channel(walk, node, x)
    if isinstance(module, nn.Linear) and isinstance(x, TensorLabels) and not kwargs:
        return linear(walk, node, module, x)
    if isinstance(module, nn.Embedding) and isinstance(x, TensorLabels) and not kwargs:
        return embedding(walk, node, module, x)
    if isinstance(module, nn.MultiheadAttention):
        return multihead_attention(walk, node, module, args, kwargs)
    if is_transposed_linear(module) and isinstance(x, TensorLabels) and not kwargs:
        return transposed_linear(walk, node, module, x)
    if (
        isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
        and batched
        and len(batched.labels) >= 3
    ):
        return convolution(walk, node, module, batched)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and batched:
        return batch_norm(walk, node, module, batched)
    if isinstance(module, nn.LayerNorm | nn.RMSNorm) and isinstance(x, TensorLabels):
        return layer_norm(walk, node, module, x)
    if isinstance(module, nn.GroupNorm) and batched:
        return group_norm(walk, node, module, batched)
    if is_activation_module(module) and isinstance(x, TensorLabels):
        walk.activation(node, x)
        return x
    if isinstance(module, PASS_THROUGH_MODULES) and isinstance(x, TensorLabels):
        return x
    if (
        isinstance(module, POOL_MODULES)
        and batched
        and not getattr(module, "return_indices", False)
    ):
        return pooled(walk, node, batched)
    if isinstance(module, nn.Flatten) and isinstance(x, TensorLabels):
        return flattened(walk, node, x, module.start_dim, module.end_dim)
    if isinstance(module, nn.Softmax | nn.LogSoftmax) and isinstance(x, TensorLabels):
        return x
    return unknown_op(walk, node, args, kwargs)


# --- functions and methods ---------------------------------------------------------------


def elementwise(walk: Walk, node: fx.Node, args: tuple[Any, ...]) -> Any:
    """Broadcasting elementwise arithmetic: axes of full size line up from the right and must
    be permuted alike; an axis of size 1 broadcasts and constrains nothing."""
    tensors = [value for value in args if isinstance(value, TensorLabels)]
    if not tensors:
        return walk.fixed_output(node)
    shape = walk.output_shape(node)
    labels: list[Label] = []
    for position in range(1, len(shape) + 1):
        size = shape[-position]
        aligned = [
            tensor.labels[-position]
            for tensor in tensors
            if len(tensor.labels) >= position and label_length(tensor.labels[-position]) == size
        ]
        for other in aligned[1:]:
            walk.unknowns.unite_labels(aligned[0], other, f"{walk.describe(node)}")
        labels.append(aligned[0] if aligned else fixed(size))
    result = TensorLabels(list(reversed(labels)))
    if (
        node.target in RESIDUAL_FUNCTIONS
        and len(tensors) == 2
        and tensors[0].shape == tensors[1].shape
    ):
        walk.residual(node, result)
    return result


def _merged(walk: Walk, node: fx.Node, outer: Label, inner: Label) -> Label:
    """Two adjacent axes as one (row-major): ``outer``'s units, each ``len(inner)`` entries;
    heads and the entries within them as the nested class they came from."""
    heads = merged_heads(walk, outer, inner)
    if heads is not None:
        return heads
    if is_fixed(inner):
        return repeated_entries(outer, label_length(inner))
    if is_fixed(outer):
        return concatenated([inner] * label_length(outer))
    reason = f"{walk.describe(node)}: merges two permuted axes"
    walk.unknowns.block_label(outer, reason)
    walk.unknowns.block_label(inner, reason)
    return fixed(label_length(outer) * label_length(inner))


def flattened(walk: Walk, node: fx.Node, x: TensorLabels, start: int, end: int) -> TensorLabels:
    rank = len(x.labels)
    start, end = _dim(start, rank), _dim(end, rank)
    merged = x.labels[start]
    for label in x.labels[start + 1 : end + 1]:
        merged = _merged(walk, node, merged, label)
    return TensorLabels([*x.labels[:start], merged, *x.labels[end + 1 :]])


def reshaped(walk: Walk, node: fx.Node, x: TensorLabels) -> TensorLabels:
    """A view/reshape: axes that keep their size keep their label, runs of axes merged into one
    are flattened, one axis split where only its unit can be the first part; else blocked."""
    out_shape = walk.output_shape(node)
    labels: list[Label] = []
    reason = f"{walk.describe(node)}: a reshape the rules do not follow"
    i = j = 0
    in_labels = x.labels
    while i < len(in_labels) or j < len(out_shape):
        if i < len(in_labels) and label_length(in_labels[i]) == 1:
            walk.unknowns.block_label(in_labels[i], reason)
            i += 1
            continue
        if j < len(out_shape) and out_shape[j] == 1:
            labels.append(fixed(1))
            j += 1
            continue
        if i >= len(in_labels) or j >= len(out_shape):
            break
        group_in, group_out = [in_labels[i]], [out_shape[j]]
        size_in, size_out = label_length(in_labels[i]), out_shape[j]
        i, j = i + 1, j + 1
        while size_in != size_out:
            if size_in < size_out and i < len(in_labels):
                group_in.append(in_labels[i])
                size_in *= label_length(in_labels[i])
                i += 1
            elif size_out < size_in and j < len(out_shape):
                group_out.append(out_shape[j])
                size_out *= out_shape[j]
                j += 1
            else:
                break
        if len(group_out) == 1:
            merged = group_in[0]
            for label in group_in[1:]:
                merged = _merged(walk, node, merged, label)
            labels.append(merged)
        elif len(group_in) == 1 and _splits_units(group_in[0], group_out):
            part = group_in[0][0]
            labels.append((Part(part.unknown, part.units, 1),))
            labels.extend(fixed(size) for size in group_out[1:])
        elif len(group_in) == 1 and (heads := split_into_heads(walk, node, group_in[0], group_out)):
            labels.extend(heads)
        else:
            for label in group_in:
                walk.unknowns.block_label(label, reason)
            labels.extend(fixed(size) for size in group_out)
    if [label_length(label) for label in labels] != list(out_shape):
        for label in in_labels:
            walk.unknowns.block_label(label, reason)
        return TensorLabels([fixed(size) for size in out_shape])
    return TensorLabels(labels)


def _splits_units(label: Label, sizes: list[int]) -> bool:
    """Whether splitting ``label`` into ``sizes`` puts its units first and their blocks after
    (undoing a flatten)."""
    if len(label) != 1:
        return False
    part = label[0]
    rest = 1
    for size in sizes[1:]:
        rest *= size
    return sizes[0] == part.units and rest == part.block


def permuted_axes(x: TensorLabels, dims: Sequence[int]) -> TensorLabels:
    rank = len(x.labels)
    return TensorLabels([x.labels[_dim(dim, rank)] for dim in dims])


def concatenation(walk: Walk, node: fx.Node, tensors: Sequence[Any], dim: int) -> Any:
    if not tensors or not all(isinstance(value, TensorLabels) for value in tensors):
        return unknown_op(walk, node, (list(tensors),), {})
    rank = len(tensors[0].labels)
    dim = _dim(dim, rank)
    labels = list(tensors[0].labels)
    for other in tensors[1:]:
        for axis in range(rank):
            if axis != dim:
                walk.unknowns.unite_labels(labels[axis], other.labels[axis], walk.describe(node))
    labels[dim] = concatenated([value.labels[dim] for value in tensors])
    return TensorLabels(labels)


def reduction(walk: Walk, node: fx.Node, x: TensorLabels, dims: Any, keepdim: bool) -> TensorLabels:
    """A sum, mean or max over axes: the same whatever order their entries are in, so the
    reduced axes constrain nothing; the others keep their labels."""
    rank = len(x.labels)
    if dims is None:
        return TensorLabels([fixed(1)] * rank if keepdim else [])
    reduced = {_dim(dim, rank) for dim in (dims if isinstance(dims, list | tuple) else [dims])}
    labels = [
        fixed(1) if axis in reduced else label
        for axis, label in enumerate(x.labels)
        if keepdim or axis not in reduced
    ]
    return TensorLabels(labels)


def _functional_norm_vectors(
    walk: Walk, node: fx.Node, vectors: Sequence[Any], axes: Sequence[Label]
) -> None:
    for vector in vectors:
        if isinstance(vector, TensorLabels):
            if len(vector.labels) != len(axes):
                walk.unknowns.block_label(vector.labels[0], walk.describe(node))
                continue
            for vector_axis, label in zip(vector.labels, axes, strict=True):
                if any(part.role is not None for part in label):
                    reason = f"{walk.describe(node)}: a tensor shared by every head"
                    walk.unknowns.block_label(label, reason)
                    walk.unknowns.block_label(vector_axis, reason)
                    continue
                walk.unknowns.unite_labels(vector_axis, label, walk.describe(node))


def function_rule(walk: Walk, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    target = node.target
    x = args[0] if args else None
    if target is operator.getitem and isinstance(x, list | tuple):
        return x[args[1]]
    if target is getattr and isinstance(x, TensorLabels) and args[1] in TENSOR_ATTRIBUTES:
        return walk.opaque()
    if target is operator.getitem and isinstance(x, TensorLabels):
        return indexed(walk, node, x, args[1])
    if target in ELEMENTWISE_FUNCTIONS:
        return elementwise(walk, node, args)
    if target in MATRIX_PRODUCT_FUNCTIONS:
        return matrix_product(walk, node, args[0], args[1])
    if target in ATTENTION_FUNCTIONS:
        return scaled_dot_product_attention(walk, node, args, kwargs)
    if target in (torch.cat, torch.concat):
        return concatenation(
            walk,
            node,
            _argument(args, kwargs, 0, "tensors", []),
            _argument(args, kwargs, 1, "dim", 0),
        )
    if not isinstance(x, TensorLabels):
        return unknown_op(walk, node, args, kwargs)
    if target in ACTIVATION_FUNCTIONS:
        walk.activation(node, x)
        return x
    if _passes_through(target):
        return x
    if target is torch.flatten:
        return flattened(
            walk,
            node,
            x,
            _argument(args, kwargs, 1, "start_dim", 0),
            _argument(args, kwargs, 2, "end_dim", -1),
        )
    if target is torch.reshape:
        return reshaped(walk, node, x)
    if target is torch.permute:
        return permuted_axes(x, _argument(args, kwargs, 1, "dims", ()))
    if target is torch.transpose:
        return _transposed(x, args[1], args[2])
    if target is torch.unbind:
        return unbound(walk, node, x, _argument(args, kwargs, 1, "dim", 0))
    if target in (torch.split, torch.chunk):
        return pieces_of(
            walk, node, x, args[1], _argument(args, kwargs, 2, "dim", 0), target is torch.chunk
        )
    if target is torch.unsqueeze:
        return unsqueezed(x, _argument(args, kwargs, 1, "dim", 0))
    if target in (torch.mean, torch.sum, torch.amax):
        return reduction(
            walk,
            node,
            x,
            _argument(args, kwargs, 1, "dim", None),
            _argument(args, kwargs, 2, "keepdim", False),
        )
    if target in POOL_FUNCTIONS and _channel(walk, node, x):
        return pooled(walk, node, x)
    if target in (F.softmax, torch.softmax, F.log_softmax):
        return x
    if target is F.layer_norm:
        shape = _argument(args, kwargs, 1, "normalized_shape", ())
        axes = x.labels[-len(shape) :] if shape else ()
        _functional_norm_vectors(
            walk,
            node,
            [_argument(args, kwargs, 2, "weight", None), _argument(args, kwargs, 3, "bias", None)],
            axes,
        )
        return x
    if target is F.rms_norm:
        shape = _argument(args, kwargs, 1, "normalized_shape", ())
        axes = x.labels[-len(shape) :] if shape else ()
        _functional_norm_vectors(walk, node, [_argument(args, kwargs, 2, "weight", None)], axes)
        return x
    if target is F.batch_norm and len(x.labels) >= 2:
        vectors = [
            _argument(args, kwargs, index, name, None)
            for index, name in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))
        ]
        _functional_norm_vectors(walk, node, vectors, (x.labels[1],))
        return x
    return unknown_op(walk, node, args, kwargs)


def _transposed(x: TensorLabels, first: int, second: int) -> TensorLabels:
    rank = len(x.labels)
    order = list(range(rank))
    a, b = _dim(first, rank), _dim(second, rank)
    order[a], order[b] = order[b], order[a]
    return permuted_axes(x, order)


def method_rule(walk: Walk, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    name = str(node.target)
    x = args[0] if args else None
    if not isinstance(x, TensorLabels):
        return unknown_op(walk, node, args, kwargs)
    if name in ("size", "dim", "numel"):
        return walk.opaque()
    if name in ELEMENTWISE_METHODS:
        return elementwise(walk, node, args)
    if name in ACTIVATION_METHODS:
        walk.activation(node, x)
        return x
    if name in PASS_THROUGH_METHODS:
        return x
    if name in ("view", "reshape"):
        return reshaped(walk, node, x)
    if name == "flatten":
        return flattened(
            walk,
            node,
            x,
            _argument(args, kwargs, 1, "start_dim", 0),
            _argument(args, kwargs, 2, "end_dim", -1),
        )
    if name == "permute":
        dims = args[1] if len(args) == 2 and isinstance(args[1], list | tuple) else args[1:]
        return permuted_axes(x, dims)
    if name == "transpose":
        return _transposed(x, args[1], args[2])
    if name in ("mean", "sum", "amax"):
        return reduction(
            walk,
            node,
            x,
            _argument(args, kwargs, 1, "dim", None),
            _argument(args, kwargs, 2, "keepdim", False),
        )
    if name == "softmax":
        return x
    if name in ("matmul", "bmm"):
        return matrix_product(walk, node, x, args[1])
    if name == "unbind":
        return unbound(walk, node, x, _argument(args, kwargs, 1, "dim", 0))
    if name in ("split", "chunk"):
        return pieces_of(
            walk, node, x, args[1], _argument(args, kwargs, 2, "dim", 0), name == "chunk"
        )
    if name == "unsqueeze":
        return unsqueezed(x, _argument(args, kwargs, 1, "dim", 0))
    if name in ("expand", "expand_as"):
        return expanded(walk, node, x)
    return unknown_op(walk, node, args, kwargs)


def unsqueezed(x: TensorLabels, dim: int) -> TensorLabels:
    rank = len(x.labels) + 1
    position = dim + rank if dim < 0 else dim
    labels = list(x.labels)
    labels.insert(position, fixed(1))
    return TensorLabels(labels)


def expanded(walk: Walk, node: fx.Node, x: TensorLabels) -> TensorLabels:
    """A broadcast view: axes keep their labels, axes of size 1 that grow (and new leading
    axes) are fixed."""
    shape = walk.output_shape(node)
    new_axes = len(shape) - len(x.labels)
    labels = [fixed(size) for size in shape[:new_axes]]
    for label, size in zip(x.labels, shape[new_axes:], strict=True):
        labels.append(label if label_length(label) == size else fixed(size))
    return TensorLabels(labels)


def unbound(walk: Walk, node: fx.Node, x: TensorLabels, dim: int) -> Any:
    """``unbind``: one tensor per entry of axis ``dim`` (the pieces of a stack axis)."""
    rank = len(x.labels)
    dim = _dim(dim, rank)
    entries = range(label_length(x.labels[dim]))
    return tuple(selected(walk, node, x, dim, index) for index in entries)


def indexed(walk: Walk, node: fx.Node, x: TensorLabels, index: Any) -> Any:
    """Basic indexing (``x[:, 0]``, ``x[..., None]``, ``x[:, 1:]``): whole axes keep their
    labels; an integer picks one entry, a part of an axis some entries, which only a fixed axis
    (or a stack of pieces) allows; tensor indices are not followed."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(item is Ellipsis for item in items):
        at = items.index(Ellipsis)
        used = sum(1 for item in items if item is not None and item is not Ellipsis)
        items[at : at + 1] = [slice(None)] * (len(x.labels) - used)
    if not all(item is None or isinstance(item, int | slice) for item in items):
        return unknown_op(walk, node, (x,), {})
    current = x
    axis = 0
    labels: list[Label] = []
    reason = f"{walk.describe(node)}: picks entries of a permuted axis"
    for item in items:
        if item is None:
            labels.append(fixed(1))
            continue
        if axis >= len(current.labels):
            return unknown_op(walk, node, (x,), {})
        label = current.labels[axis]
        if isinstance(item, slice) and item == slice(None):
            labels.append(label)
            axis += 1
        elif isinstance(item, int):
            if len(label) == 1 and label[0].role == "stack" and not labels:
                # A piece of a fused projection (``qkv[0]``): its heads become the piece's.
                current = selected(walk, node, current, axis, item)
            else:
                walk.unknowns.block_label(label, reason)
                current = TensorLabels([*current.labels[:axis], *current.labels[axis + 1 :]])
        else:
            walk.unknowns.block_label(label, reason)
            labels.append(fixed(len(range(*item.indices(label_length(label))))))
            axis += 1
    labels.extend(current.labels[axis:])
    result = TensorLabels(labels)
    if result.shape != walk.output_shape(node):
        return unknown_op(walk, node, (x,), {})
    return result
