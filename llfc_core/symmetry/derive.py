"""Deriving a model's permutation symmetries from its traced graph.

The model (built from trusted library code: the built-in archs, torchvision, timm, or an ONNX
graph turned into torch modules; never code a user uploaded) is traced with ``torch.fx`` and its
shapes propagated on the meta device. Every tensor axis gets a label
(:mod:`llfc_core.symmetry.labels`); each op's rule (:mod:`llfc_core.symmetry.rules`) unites the
axes that must move together and blocks those that must not. A Linear's or convolution's output
units are born as a new unknown; a residual addition unites the streams it adds (one
permutation for the whole stream); the model's input and output are fixed. The classes left at
the end that hold a birth and were never blocked are the hidden permutations; each state-dict
tensor axis is labelled by the class of what flows through it.

The same walk lists the feature layers LLFC measures: every elementwise activation call (a
module called twice gives two layers, ``name`` and ``name#2``) and every residual addition,
named by module path.
"""

from __future__ import annotations

import copy
import inspect
import operator
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import fx, nn
from torch.fx.experimental.meta_tracer import MetaTracer
from torch.fx.passes.shape_prop import ShapeProp

from llfc_core.errors import ArchitectureError
from llfc_core.features import ResidualTap, is_activation_module, is_transposed_linear
from llfc_core.graph_lock import GRAPH_LOCK
from llfc_core.permutation import Nesting, PermutationSpec, Segment
from llfc_core.symmetry.labels import (
    Heads,
    Label,
    Part,
    Split,
    Unknowns,
    fixed,
)
from llfc_core.symmetry.rules import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    TensorLabels,
    function_rule,
    method_rule,
    module_rule,
)

OUTPUT_REASON = "the model's output (logits)"
INPUT_REASON = "the model's input"


@dataclass(frozen=True)
class FeatureSite:
    """A tensor LLFC can measure: an activation's output or a residual stream after an addition."""

    name: str
    kind: str
    """"activation" or "residual"."""
    node: str
    """The fx node that computes it."""
    labels: tuple[Label, ...]
    """Its axes' labels (the batch first)."""


@dataclass(frozen=True)
class UnpermutedAxis:
    """A tensor axis of hidden units that no permutation may touch, and why."""

    key: str
    axis: int
    reason: str


@dataclass
class DerivedSymmetry:
    """A spec derived from a graph, with what the inspect report shows about it."""

    spec: PermutationSpec
    sizes: dict[str, int]
    feature_sites: list[FeatureSite]
    unpermuted: list[UnpermutedAxis]
    traced: fx.GraphModule
    """The traced model as traced; a model that runs it instruments its own copy
    (:func:`instrument`)."""


def _known_leaf(module: nn.Module) -> bool:
    """Modules of other libraries that the rules know as a whole (GPT-2's Conv1D, Hugging
    Face's activations), so the graph keeps them as one call."""
    return is_transposed_linear(module) or is_activation_module(module)


class _Tracer(fx.Tracer):
    """torch.fx's tracer; torch.nn's own modules are leaves (the rules know them by type)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return super().is_leaf_module(m, module_qualified_name) or _known_leaf(m)


class _ShapeTracer(MetaTracer):
    """A tracer that runs every op on the meta device as it records it, so that Python code
    branching on shapes (Hugging Face's models do, building masks and views) sees real sizes;
    the graph is then valid for inputs of the traced shape only."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return super().is_leaf_module(m, module_qualified_name) or _known_leaf(m)


class Walk:
    """The state of one pass over a graph: labels of every value, bindings of every tensor axis."""

    def __init__(self, root: nn.Module, graph_module: fx.GraphModule) -> None:
        self.root = root
        self.graph_module = graph_module
        self.unknowns = Unknowns()
        self.axis_labels: dict[tuple[str, int], Label] = {}
        self.statistics_keys: set[str] = set()
        self.births: list[str] = []
        self.sites: list[FeatureSite] = []
        self._calls: dict[str, int] = {}
        self._state_keys = set(root.state_dict())

    # helpers the rules call

    def module(self, path: str) -> nn.Module:
        return self.graph_module.get_submodule(path)

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"{node.target} ({type(self.module(str(node.target))).__name__})"
        target = getattr(node.target, "__name__", str(node.target))
        where = _enclosing_module(node)
        return f"{target} in {where or 'the top-level forward'}"

    def output_shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()

    def fixed_output(self, node: fx.Node) -> Any:
        meta = node.meta.get("tensor_meta")
        return _fixed_like(meta)

    def opaque(self) -> object:
        return object()

    def birth(self, size: int, path: str) -> Label:
        self.births.append(path)
        return (Part(self.unknowns.new(size, path), size, 1),)

    def bind(self, path: str, tensor: str, axis: int, label: Label, reason: str) -> None:
        """Tensor ``path.tensor``'s ``axis`` carries ``label``; a second binding must agree."""
        key = f"{path}.{tensor}" if path else tensor
        if any(part.role is not None for part in label):
            # One vector for every head (a per-head-dimension norm's weight) cannot follow a
            # different permutation in each head.
            self.unknowns.block_label(label, f"{reason}: a tensor shared by every head")
            label = fixed(sum(part.length for part in label))
        existing = self.axis_labels.get((key, axis))
        if existing is None:
            self.axis_labels[(key, axis)] = label
        else:
            self.unknowns.unite_labels(existing, label, reason)

    def statistics(self, path: str) -> None:
        for tensor in ("running_mean", "running_var"):
            self.statistics_keys.add(f"{path}.{tensor}" if path else tensor)

    def activation(self, node: fx.Node, x: TensorLabels) -> None:
        self._site(node, "activation", x)

    def residual(self, node: fx.Node, x: TensorLabels) -> None:
        self._site(node, "residual", x)

    def _site(self, node: fx.Node, kind: str, x: TensorLabels) -> None:
        if len(x.labels) >= 2:
            self.sites.append(FeatureSite(self._site_name(node), kind, node.name, x.labels))

    def moves(self, label: Label) -> bool:
        """Whether some unit of the axis may be permuted (once the walk is over)."""
        return any(
            part.unknown is not None and not self.unknowns.is_blocked(part.unknown)
            for part in label
        )

    def unit_axis(self, site: FeatureSite) -> int:
        """A site's axis of units: 1, unless that one never moves and the last one does (a
        transformer's batch x tokens x units)."""
        labels = site.labels
        if len(labels) >= 3 and not self.moves(labels[1]) and self.moves(labels[-1]):
            return len(labels) - 1
        return 1

    def _site_name(self, node: fx.Node) -> str:
        if node.op == "call_module":
            base = str(node.target)
        else:
            target = node.target if isinstance(node.target, str) else node.target.__name__
            enclosing = _enclosing_module(node)
            base = f"{enclosing}.{target}" if enclosing else str(target)
        count = self._calls[base] = self._calls.get(base, 0) + 1
        return base if count == 1 else f"{base}#{count}"

    # the walk

    def value_of_attribute(self, path: str) -> TensorLabels | object:
        value = _attribute(self.graph_module, path)
        if not isinstance(value, torch.Tensor):
            return self.opaque()
        if path not in self._state_keys:
            return TensorLabels([fixed(size) for size in value.shape])
        labels = []
        for axis, size in enumerate(value.shape):
            label = self.axis_labels.get((path, axis))
            if label is None:
                label = (Part(self.unknowns.new(size), size, 1),)
                self.axis_labels[(path, axis)] = label
            labels.append(label)
        return TensorLabels(labels)

    def run(self) -> None:
        values: dict[str, Any] = {}
        for node in self.graph_module.graph.nodes:
            args = fx.node.map_arg(node.args, lambda n: values[n.name])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n.name])
            if node.op == "placeholder":
                values[node.name] = self.fixed_output(node)
            elif node.op == "get_attr":
                values[node.name] = self.value_of_attribute(str(node.target))
            elif node.op == "call_module":
                values[node.name] = module_rule(self, node, tuple(args), dict(kwargs))
            elif node.op == "call_function":
                values[node.name] = function_rule(self, node, tuple(args), dict(kwargs))
            elif node.op == "call_method":
                values[node.name] = method_rule(self, node, tuple(args), dict(kwargs))
            elif node.op == "output":
                for value in _tensors_in(args):
                    for label in value.labels:
                        self.unknowns.block_label(label, OUTPUT_REASON)


def _enclosing_module(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [path for path, _ in stack.values()]
    return str(paths[-1]) if paths else ""


def _attribute(module: nn.Module, path: str) -> Any:
    value: Any = module
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _fixed_like(meta: Any) -> Any:
    if meta is None:
        return object()
    if hasattr(meta, "shape"):
        return TensorLabels([fixed(int(size)) for size in meta.shape])
    if isinstance(meta, list | tuple):
        return type(meta)(_fixed_like(item) for item in meta)
    return object()


def _tensors_in(value: Any) -> list[TensorLabels]:
    if isinstance(value, TensorLabels):
        return [value]
    if isinstance(value, list | tuple):
        return [tensor for item in value for tensor in _tensors_in(item)]
    if isinstance(value, dict):
        return [tensor for item in value.values() for tensor in _tensors_in(item)]
    return []


def trace(model: nn.Module, example: torch.Tensor | None = None) -> fx.GraphModule:
    """``model`` as a torch.fx graph, or :class:`ArchitectureError` saying why it cannot be.

    With ``example`` (a meta tensor), the graph is traced for inputs of its shape and dtype
    only (:class:`_ShapeTracer`), for models whose Python code branches on shapes."""
    tracer: fx.Tracer
    try:
        with GRAPH_LOCK:
            if example is None:
                tracer = _Tracer()
                graph = tracer.trace(model)
            else:
                tracer = _ShapeTracer()
                (argument, *_) = inspect.signature(model.forward).parameters
                with warnings.catch_warnings():
                    # It warns for every op whose output is not one tensor (a tuple, a size).
                    warnings.simplefilter("ignore")
                    graph = tracer.trace(model, meta_args={argument: example})
    except Exception as error:  # any tracing failure is the model's limitation
        raise ArchitectureError(
            f"The model cannot be traced into a graph ({type(error).__name__}: {error}); its "
            "permutation symmetries cannot be derived."
        ) from error
    return fx.GraphModule(tracer.root, graph)


def derive_symmetry(
    model: nn.Module,
    input_shape: tuple[int, ...],
    input_dtype: torch.dtype = torch.float32,
    shape_specific: bool = False,
    batch_size: int = 2,
) -> DerivedSymmetry:
    """The permutation spec of ``model`` (in eval mode) for inputs of ``input_shape`` (one
    example, no batch axis) and ``input_dtype`` (token ids: ``torch.long``), with its feature
    sites and the axes left unpermuted. ``shape_specific`` traces for that shape only
    (:func:`trace`), and ``batch_size`` examples."""
    model = model.eval()
    example = torch.empty((batch_size, *input_shape), dtype=input_dtype, device="meta")
    graph_module = trace(model, example if shape_specific else None)
    meta_module = (
        copy.deepcopy(graph_module).to("meta") if _has_real_tensors(graph_module) else graph_module
    )
    try:
        with GRAPH_LOCK:
            ShapeProp(meta_module).propagate(example)
    except Exception as error:  # a shape error is the input shape's
        raise ArchitectureError(
            f"The model does not run on inputs of shape {list(input_shape)} "
            f"({type(error).__name__}: {error}); set the arch's input_shape."
        ) from error
    for node, meta_node in zip(graph_module.graph.nodes, meta_module.graph.nodes, strict=True):
        node.meta.update(meta_node.meta)
    walk = Walk(model, graph_module)
    walk.run()
    return _result(walk, model, graph_module)


def _has_real_tensors(module: nn.Module) -> bool:
    return any(not tensor.is_meta for tensor in [*module.parameters(), *module.buffers()])


class _Naming:
    """Names for the classes left at the end of a walk: ``P_<first birth>`` for a permutation,
    ``H_<its first nested permutation>`` for a shared head order; None for a class that may
    not move."""

    def __init__(self, walk: Walk) -> None:
        self.unknowns = walk.unknowns
        self.birth_order = {path: index for index, path in enumerate(walk.births)}
        self.names: dict[int, str | None] = {}
        self.nested: dict[str, Nesting] = {}
        self.order_names: dict[int, str] = {}

    def name(self, unknown: int) -> str | None:
        root = self.unknowns.find(unknown)
        if root not in self.names:
            cls = self.unknowns.get(root)
            self.names[root] = (
                None
                if self.unknowns.is_blocked(root) or not cls.births
                else "P_" + min(cls.births, key=self.birth_order.__getitem__)
            )
        return self.names[root]

    def segments(self, part: Part) -> list[tuple[Segment, str | None]]:
        """The segments ``part`` stands for (a split class's pieces one by one), each with the
        reason it may not move when it is left in place."""
        assert part.unknown is not None
        refinement = self.unknowns.refinement(part.unknown)
        if isinstance(refinement, Split) and not self.unknowns.is_blocked(part.unknown):
            pieces = []
            for piece in refinement.pieces:
                size = self.unknowns.get(piece).size
                pieces.extend(self.segments(Part(piece, size, part.block)))
            return pieces
        name = self.name(part.unknown)
        if name is not None and isinstance(refinement, Heads):
            order = self.unknowns.find(refinement.order)
            self.order_names.setdefault(order, "H_" + name.removeprefix("P_"))
            self.nested[name] = Nesting(
                self.order_names[order], part.units // refinement.head_size, refinement.head_size
            )
        reason = None
        if name is None and self.unknowns.get(part.unknown).births:
            reason = self.unknowns.blocked_reason(part.unknown)
        return [(Segment(name, part.units, part.block), reason)]


def _result(walk: Walk, model: nn.Module, graph_module: fx.GraphModule) -> DerivedSymmetry:
    naming = _Naming(walk)
    axes: dict[str, tuple[str | None, ...]] = {}
    composites: dict[str, tuple[Segment, ...]] = {}
    unpermuted: list[UnpermutedAxis] = []
    for key, tensor in model.state_dict().items():
        per_axis: list[str | None] = []
        for axis in range(tensor.dim()):
            label = walk.axis_labels.get((key, axis))
            if label is None:
                per_axis.append(None)
                continue
            found = [
                found
                for part in label
                for found in (
                    [(Segment(None, part.units, part.block), None)]
                    if part.unknown is None
                    else naming.segments(part)
                )
            ]
            per_axis.append(_axis_name(key, axis, [segment for segment, _ in found], composites))
            reasons = [reason for _, reason in found if reason is not None]
            if reasons:
                unpermuted.append(UnpermutedAxis(key, axis, reasons[0]))
        axes[key] = tuple(per_axis)
    # Activation matching observes a permutation at its activations; a residual stream with
    # none (ConvNeXt's: its blocks add without an activation after) at its additions.
    by_kind: dict[str, dict[str, list[str]]] = {"activation": {}, "residual": {}}
    feature_axes: dict[str, int] = {}
    for site in walk.sites:
        axis = walk.unit_axis(site)
        (part, *more) = site.labels[axis]
        if not more and part.block == 1 and part.unknown is not None and part.role is None:
            name = naming.name(part.unknown)
            if name is not None and name not in naming.nested:
                by_kind[site.kind].setdefault(name, []).append(site.name)
                if axis != 1:
                    feature_axes[site.name] = axis
    features = {**by_kind["residual"], **by_kind["activation"]}
    spec = PermutationSpec(
        axes_to_perm=axes,
        perm_to_features={name: tuple(sites) for name, sites in features.items()},
        statistics_keys=frozenset(walk.statistics_keys & set(axes)),
        composites=composites,
        nested=naming.nested,
        feature_axes=feature_axes,
    )
    sizes = {
        name: walk.unknowns.get(root).size
        for root, name in naming.names.items()
        if name is not None
    }
    return DerivedSymmetry(spec, sizes, walk.sites, unpermuted, graph_module)


def _axis_name(
    key: str, axis: int, segments: list[Segment], composites: dict[str, tuple[Segment, ...]]
) -> str | None:
    if all(segment.perm is None for segment in segments):
        return None
    if len(segments) == 1 and segments[0].block == 1:
        return segments[0].perm
    name = f"C_{key}[{axis}]"
    composites[name] = tuple(segments)
    return name


def instrument(
    graph_module: fx.GraphModule,
    sites: list[FeatureSite],
    placed: Mapping[str, tuple[str, nn.Module]] | None = None,
) -> dict[str, str]:
    """Make every activation call of a traced model a module of its own, at the site's name
    (``layer1.0.relu#2`` for the second call of ``layer1.0.relu``; ``features.relu`` for
    ``F.relu`` called in ``features``' forward), so forward hooks see each call once, and follow
    every residual addition by a :class:`~llfc_core.features.ResidualTap` at its site's name.
    ``placed`` (site name -> path and module of an earlier instrumentation of the same model)
    makes a second graph call the very same modules, so hooks on them see either graph's calls.
    In place; returns the module path of each site."""
    nodes = {node.name: node for node in graph_module.graph.nodes}
    site_modules: dict[str, str] = {}
    existing = {name for name, _ in graph_module.named_modules()}
    placed = placed or {}
    for site in sites:
        node = nodes[site.node]
        module: nn.Module | None
        if site.name in placed:
            path, module = placed[site.name]
        elif site.kind == "residual":
            path, module = _free_path(site.name, existing), ResidualTap()
        elif node.op == "call_module" and str(node.target) == site.name:
            site_modules[site.name] = site.name
            continue
        else:
            module = (
                copy.deepcopy(graph_module.get_submodule(str(node.target)))
                if node.op == "call_module"
                else _as_module(node)
            )
            if module is None:
                continue
            path = _free_path(site.name, existing)
        # A placed module may be in the tree already (a shared child): set again, unchanged.
        graph_module.add_submodule(path, module)
        existing.add(path)
        if site.kind == "residual":
            with graph_module.graph.inserting_after(node):
                tap = graph_module.graph.call_module(path, (node,))
            node.replace_all_uses_with(tap, delete_user_cb=partial(operator.is_not, tap))
        else:
            with graph_module.graph.inserting_after(node):
                call = graph_module.graph.call_module(path, (node.args[0],))
            node.replace_all_uses_with(call)
            graph_module.graph.erase_node(node)
        site_modules[site.name] = path
    graph_module.recompile()
    return site_modules


def _as_module(node: fx.Node) -> nn.Module | None:
    """The activation module that computes what functional call ``node`` does, or None when its
    arguments are not all keywords the module takes (F.gelu(x, approximate="tanh") becomes
    nn.GELU(approximate="tanh"); in-place is dropped: a feature must not overwrite its input)."""
    if node.op == "call_function":
        module_type = ACTIVATION_FUNCTIONS.get(node.target)
    else:
        module_type = ACTIVATION_METHODS.get(str(node.target))
    if module_type is None or len(node.args) > 1:
        return None
    options = {key: value for key, value in node.kwargs.items() if key != "inplace"}
    if any(isinstance(value, fx.Node) for value in options.values()):
        return None
    try:
        return module_type(**options)
    except TypeError:
        return None


def _free_path(name: str, existing: set[str]) -> str:
    """``name``, or ``name#site`` where a module of the model already has that path."""
    path = name if name not in existing else f"{name}#site"
    existing.add(path)
    return path
