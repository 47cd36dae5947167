"""The rules of attention: projections split into pieces and heads, and the products of heads.

Multi-head attention computes, for every head ``h``, ``softmax(q_h k_h^T / sqrt(d)) v_h`` and
projects the heads' outputs, laid end to end, back to the stream. Its permutation symmetries:

- the heads may be reordered, the same way for queries, keys, values and the output projection's
  input (each head's product only ever meets its own pieces);
- within each head, the query and key dimensions may be permuted together (``q_h . k_h`` is a sum
  over them) and, separately, the value dimensions together with the output projection's input.

These rules find that structure in the graph, never in a model's names: a projection's output
``split`` (GPT-2's ``c_attn``) or reshaped with a leading piece axis (timm's ``qkv``) refines its
class into pieces; a reshape of one axis into ``(heads, head_dim)`` refines a class into a nested
one (:class:`~llfc_core.symmetry.labels.Heads`); the attention product unites what it contracts
and the head axes it batches over; merging the head axes back gives the nested class as one axis.
``nn.MultiheadAttention``, a leaf whose inside the graph does not show, has one rule for the same
structure (self-attention only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from llfc_core.symmetry.labels import Heads, Label, Part, Split, fixed, label_length

if TYPE_CHECKING:
    from llfc_core.symmetry.derive import Walk
    from llfc_core.symmetry.rules import TensorLabels


def _single(label: Label) -> Part | None:
    return label[0] if len(label) == 1 and label[0].unknown is not None else None


def _piece_births(walk: Walk, whole: int, sizes: list[int]) -> list[int]:
    """New classes for consecutive pieces of ``whole``, named after its first birth and the
    entries they cover (``blocks.0.attn.qkv[0:64]``)."""
    births = walk.unknowns.get(whole).births
    pieces = []
    start = 0
    for size in sizes:
        birth = f"{births[0]}[{start}:{start + size}]" if births else None
        if birth is not None:
            walk.births.append(birth)
        pieces.append(walk.unknowns.new(size, birth))
        start += size
    return pieces


def refined_pieces(walk: Walk, node: fx.Node, whole: int, sizes: list[int]) -> list[int]:
    """The classes of ``whole``'s consecutive pieces of ``sizes``."""
    split = walk.unknowns.refine(
        whole, Split(tuple(_piece_births(walk, whole, sizes))), walk.describe(node)
    )
    if isinstance(split, Split) and len(split.pieces) == len(sizes):
        return list(split.pieces)
    return []


def refined_heads(walk: Walk, node: fx.Node, whole: int, heads: int, head_size: int) -> bool:
    """Make ``whole`` a nested class of ``heads`` heads of ``head_size``; False when it has a
    different structure already."""
    order = walk.unknowns.new(heads)
    refinement = walk.unknowns.refine(whole, Heads(order, head_size), walk.describe(node))
    return isinstance(refinement, Heads) and refinement.head_size == head_size


def split_into_heads(
    walk: Walk, node: fx.Node, label: Label, sizes: list[int]
) -> list[Label] | None:
    """Labels of one axis reshaped into ``(heads, head_dim)`` or ``(pieces, heads, head_dim)``;
    None when the reshape is not one of those."""
    part = _single(label)
    if part is None or part.block != 1 or part.role is not None or len(sizes) not in (2, 3):
        return None
    whole = part.unknown
    assert whole is not None
    heads, head_size = sizes[-2], sizes[-1]
    if len(sizes) == 2:
        if not refined_heads(walk, node, whole, heads, head_size):
            return None
        return [(Part(whole, heads, 1, "heads"),), (Part(whole, head_size, 1, "within"),)]
    pieces = refined_pieces(walk, node, whole, [heads * head_size] * sizes[0])
    if not pieces or not all(
        refined_heads(walk, node, piece, heads, head_size) for piece in pieces
    ):
        return None
    return [
        (Part(whole, sizes[0], 1, "stack"),),
        (Part(whole, heads, 1, "heads"),),
        (Part(whole, head_size, 1, "within"),),
    ]


def merged_heads(walk: Walk, outer: Label, inner: Label) -> Label | None:
    """The axis made by merging a head axis with the axis within heads of the same nested
    class, as that class; None for any other pair of axes."""
    head, within = _single(outer), _single(inner)
    if head is None or within is None or head.role != "heads" or within.role != "within":
        return None
    assert head.unknown is not None and within.unknown is not None
    head_refinement = walk.unknowns.refinement(head.unknown)
    within_refinement = walk.unknowns.refinement(within.unknown)
    if not (isinstance(head_refinement, Heads) and isinstance(within_refinement, Heads)):
        return None
    if walk.unknowns.find(head_refinement.order) != walk.unknowns.find(within_refinement.order):
        return None
    return (Part(within.unknown, head.units * within.units, 1),)


def _substituted(walk: Walk, label: Label, whole: int, piece: int) -> Label:
    """``label`` with the head and within-head axes of split class ``whole`` now those of its
    selected ``piece``."""
    root = walk.unknowns.find(whole)
    return tuple(
        Part(piece, part.units, part.block, part.role)
        if part.unknown is not None
        and part.role in ("heads", "within")
        and walk.unknowns.find(part.unknown) == root
        else part
        for part in label
    )


def selected(walk: Walk, node: fx.Node, x: TensorLabels, dim: int, index: int) -> TensorLabels:
    """Entry ``index`` of axis ``dim``: for a stack of pieces, that piece (the other axes now
    its heads); for a fixed axis, the other axes as they are; a permuted axis is blocked."""
    from llfc_core.symmetry.rules import TensorLabels

    label = x.labels[dim]
    rest = [*x.labels[:dim], *x.labels[dim + 1 :]]
    part = _single(label)
    if part is not None and part.role == "stack":
        assert part.unknown is not None
        split = walk.unknowns.refinement(part.unknown)
        if isinstance(split, Split) and 0 <= index < len(split.pieces):
            piece = split.pieces[index]
            return TensorLabels([_substituted(walk, other, part.unknown, piece) for other in rest])
    walk.unknowns.block_label(label, f"{walk.describe(node)}: picks entries of a permuted axis")
    return TensorLabels(rest)


def pieces_of(
    walk: Walk, node: fx.Node, x: TensorLabels, size_or_sizes: Any, dim: int, chunks: bool
) -> Any:
    """``split``/``chunk`` along ``dim``: a permuted axis becomes consecutive pieces, each a
    class of its own."""
    from llfc_core.symmetry.rules import TensorLabels, unknown_op

    rank = len(x.labels)
    dim = dim + rank if dim < 0 else dim
    length = label_length(x.labels[dim])
    if chunks and isinstance(size_or_sizes, int) and size_or_sizes > 0:
        step = -(-length // size_or_sizes)
        sizes = [min(step, length - start) for start in range(0, length, step)]
    elif isinstance(size_or_sizes, int) and size_or_sizes > 0:
        sizes = [min(size_or_sizes, length - start) for start in range(0, length, size_or_sizes)]
    elif isinstance(size_or_sizes, list | tuple) and all(
        isinstance(size, int) for size in size_or_sizes
    ):
        sizes = list(size_or_sizes)
    else:
        return unknown_op(walk, node, (x,), {})
    label = x.labels[dim]
    part = _single(label)
    piece_labels: list[Label]
    if all(p.unknown is None for p in label):
        piece_labels = [fixed(size) for size in sizes]
    elif part is not None and part.block == 1 and part.role is None:
        assert part.unknown is not None
        pieces = refined_pieces(walk, node, part.unknown, sizes)
        if not pieces:
            walk.unknowns.block_label(label, f"{walk.describe(node)}: splits an axis differently")
            piece_labels = [fixed(size) for size in sizes]
        else:
            piece_labels = [
                (Part(piece, size, 1),) for piece, size in zip(pieces, sizes, strict=True)
            ]
    else:
        walk.unknowns.block_label(label, f"{walk.describe(node)}: splits a composite axis")
        piece_labels = [fixed(size) for size in sizes]
    return tuple(
        TensorLabels([*x.labels[:dim], piece_label, *x.labels[dim + 1 :]])
        for piece_label in piece_labels
    )


def _batch_axes(walk: Walk, node: fx.Node, tensors: list[TensorLabels], core: int) -> list[Label]:
    """The broadcast batch axes in front of each tensor's last ``core`` axes, united."""
    shape = walk.output_shape(node)
    batch_rank = len(shape) - core
    labels: list[Label] = []
    for position in range(1, batch_rank + 1):
        size = shape[batch_rank - position]
        aligned = [
            tensor.labels[-core - position]
            for tensor in tensors
            if len(tensor.labels) >= core + position
            and label_length(tensor.labels[-core - position]) == size
        ]
        for other in aligned[1:]:
            walk.unknowns.unite_labels(aligned[0], other, walk.describe(node))
        labels.append(aligned[0] if aligned else fixed(size))
    return list(reversed(labels))


def matrix_product(walk: Walk, node: fx.Node, a: Any, b: Any) -> Any:
    """``a @ b`` over the last two axes: the contracted axes are permuted alike (a sum over
    them ignores their order), the batch axes broadcast; the result's rows are ``a``'s, its
    columns ``b``'s."""
    from llfc_core.symmetry.rules import TensorLabels, unknown_op

    if not (
        isinstance(a, TensorLabels)
        and isinstance(b, TensorLabels)
        and len(a.labels) >= 2
        and len(b.labels) >= 2
    ):
        return unknown_op(walk, node, (a, b), {})
    walk.unknowns.unite_labels(a.labels[-1], b.labels[-2], walk.describe(node))
    batch = _batch_axes(walk, node, [a, b], 2)
    return TensorLabels([*batch, a.labels[-2], b.labels[-1]])


def scaled_dot_product_attention(
    walk: Walk, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``softmax(q k^T * scale + mask) v``: queries and keys share their last axis, keys and
    values their positions, all three their batch (head) axes; the output has the queries'
    positions and the values' last axis. A mask must not depend on permuted units."""
    from llfc_core.symmetry.rules import TensorLabels, unknown_op

    names = ("query", "key", "value", "attn_mask")
    values = [args[i] if len(args) > i else kwargs.get(name) for i, name in enumerate(names)]
    mask = values[3]
    tensors = [value for value in values[:3] if isinstance(value, TensorLabels)]
    if kwargs.get("enable_gqa") or len(tensors) != 3 or min(len(t.labels) for t in tensors) < 2:
        return unknown_op(walk, node, args, kwargs)
    query, key, value = tensors
    if isinstance(mask, TensorLabels):
        for label in mask.labels:
            walk.unknowns.block_label(label, f"{walk.describe(node)}: the attention mask")
    reason = walk.describe(node)
    walk.unknowns.unite_labels(query.labels[-1], key.labels[-1], reason)
    walk.unknowns.unite_labels(key.labels[-2], value.labels[-2], reason)
    batch = _batch_axes(walk, node, tensors, 2)
    return TensorLabels([*batch, query.labels[-2], value.labels[-1]])


def multihead_attention(
    walk: Walk,
    node: fx.Node,
    module: nn.MultiheadAttention,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """``nn.MultiheadAttention`` as self-attention (query, key and value one tensor): its packed
    ``in_proj_weight`` is three pieces of heads x head dimension, the query and key pieces one
    nested class, the value piece another under the same head order, read by ``out_proj``."""
    from llfc_core.symmetry.rules import TensorLabels, unknown_op

    names = ("query", "key", "value")
    query, key, value = (
        args[index] if len(args) > index else kwargs.get(name) for index, name in enumerate(names)
    )
    supported = (
        isinstance(query, TensorLabels)
        and query is key
        and key is value
        and module._qkv_same_embed_dim
        and module.bias_k is None
        and not module.add_zero_attn
        and module.in_proj_weight is not None
    )
    if not supported:
        return unknown_op(walk, node, args, kwargs)
    assert isinstance(query, TensorLabels)
    for name in ("attn_mask", "key_padding_mask"):
        mask = kwargs.get(name)
        if isinstance(mask, TensorLabels):
            for label in mask.labels:
                walk.unknowns.block_label(label, f"{walk.describe(node)}: the attention mask")
    path = str(node.target)
    reason = f"{path} (MultiheadAttention)"
    width, heads = module.embed_dim, module.num_heads
    walk.bind(path, "in_proj_weight", 1, query.labels[-1], reason)
    packed = walk.birth(3 * width, path)
    (part,) = packed
    assert part.unknown is not None
    pieces = refined_pieces(walk, node, part.unknown, [width] * 3)
    if len(pieces) != 3 or not all(
        refined_heads(walk, node, piece, heads, width // heads) for piece in pieces
    ):
        walk.unknowns.block_label(packed, reason)
        return unknown_op(walk, node, args, kwargs)
    queries, keys, values = pieces
    walk.unknowns.unite(queries, keys, reason)
    walk.unknowns.unite_labels(
        (Part(queries, heads, 1, "heads"),), (Part(values, heads, 1, "heads"),), reason
    )
    walk.bind(path, "in_proj_weight", 0, packed, reason)
    if module.in_proj_bias is not None:
        walk.bind(path, "in_proj_bias", 0, packed, reason)
    out_path = f"{path}.out_proj"
    walk.bind(out_path, "weight", 1, (Part(values, width, 1),), reason)
    units = walk.birth(width, out_path)
    walk.bind(out_path, "weight", 0, units, reason)
    if module.out_proj.bias is not None:
        walk.bind(out_path, "bias", 0, units, reason)
    return (TensorLabels([*query.labels[:-1], units]), walk.opaque())
