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
import operator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from llfc_core.errors import ArchitectureError
from llfc_core.features import ResidualTap
from llfc_core.graph_lock import GRAPH_LOCK
from llfc_core.permutation import PermutationSpec, Segment
from llfc_core.symmetry.labels import Label, Part, Unknowns, fixed, label_unknowns
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
    channels: Label


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
    graph_module: fx.GraphModule
    """The traced model, every activation call its own module (see :func:`instrumented`)."""
    site_modules: dict[str, str] = field(default_factory=dict)
    """Feature site name -> the module of the instrumented model that computes it."""


class _Tracer(fx.Tracer):
    """torch.fx's tracer; torch.nn's own modules are leaves (the rules know them by type)."""


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
        existing = self.axis_labels.get((key, axis))
        if existing is None:
            self.axis_labels[(key, axis)] = label
        else:
            self.unknowns.unite_labels(existing, label, reason)

    def statistics(self, path: str) -> None:
        for tensor in ("running_mean", "running_var"):
            self.statistics_keys.add(f"{path}.{tensor}" if path else tensor)

    def activation(self, node: fx.Node, x: TensorLabels) -> None:
        if len(x.labels) >= 2:
            self.sites.append(
                FeatureSite(self._site_name(node), "activation", node.name, x.labels[1])
            )

    def residual(self, node: fx.Node, x: TensorLabels) -> None:
        if len(x.labels) >= 2:
            self.sites.append(
                FeatureSite(self._site_name(node), "residual", node.name, x.labels[1])
            )

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


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as a torch.fx graph, or :class:`ArchitectureError` saying why it cannot be."""
    tracer = _Tracer()
    try:
        with GRAPH_LOCK:
            graph = tracer.trace(model)
    except Exception as error:  # any tracing failure is the model's limitation
        raise ArchitectureError(
            f"The model cannot be traced into a graph ({type(error).__name__}: {error}); its "
            "permutation symmetries cannot be derived."
        ) from error
    return fx.GraphModule(tracer.root, graph)


def derive_symmetry(model: nn.Module, input_shape: tuple[int, ...]) -> DerivedSymmetry:
    """The permutation spec of ``model`` (in eval mode) for inputs of ``input_shape`` (one
    example, no batch axis), with its feature sites and the axes left unpermuted."""
    model = model.eval()
    graph_module = trace(model)
    example = torch.empty((2, *input_shape), device="meta")
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


def _result(walk: Walk, model: nn.Module, graph_module: fx.GraphModule) -> DerivedSymmetry:
    unknowns = walk.unknowns
    birth_order = {path: index for index, path in enumerate(walk.births)}
    names: dict[int, str] = {}

    def permutation_of(unknown: int) -> str | None:
        root = unknowns.find(unknown)
        if root not in names:
            cls = unknowns.get(root)
            if cls.blocked_by is not None or not cls.births:
                return None
            names[root] = "P_" + min(cls.births, key=birth_order.__getitem__)
        return names[root]

    axes: dict[str, tuple[str | None, ...]] = {}
    composites: dict[str, tuple[Segment, ...]] = {}
    unpermuted: list[UnpermutedAxis] = []
    for key, tensor in model.state_dict().items():
        per_axis: list[str | None] = []
        for axis in range(tensor.dim()):
            label = walk.axis_labels.get((key, axis))
            per_axis.append(
                None if label is None else _axis_name(key, axis, label, permutation_of, composites)
            )
            for unknown in label_unknowns(label or ()):
                cls = unknowns.get(unknown)
                if cls.births and cls.blocked_by is not None:
                    unpermuted.append(UnpermutedAxis(key, axis, cls.blocked_by))
                    break
        axes[key] = tuple(per_axis)
    # Activation matching observes a permutation at its activations; a residual stream with
    # none (ConvNeXt's: its blocks add without an activation after) at its additions.
    by_kind: dict[str, dict[str, list[str]]] = {"activation": {}, "residual": {}}
    for site in walk.sites:
        (part, *more) = site.channels
        if not more and part.block == 1 and part.unknown is not None:
            name = permutation_of(part.unknown)
            if name is not None:
                by_kind[site.kind].setdefault(name, []).append(site.name)
    features = {**by_kind["residual"], **by_kind["activation"]}
    spec = PermutationSpec(
        axes_to_perm=axes,
        perm_to_features={name: tuple(sites) for name, sites in features.items()},
        statistics_keys=frozenset(walk.statistics_keys & set(axes)),
        composites=composites,
    )
    sizes = {name: unknowns.get(root).size for root, name in names.items()}
    instrumented = copy.deepcopy(graph_module)
    site_modules = instrument(instrumented, walk.sites)
    return DerivedSymmetry(spec, sizes, walk.sites, unpermuted, instrumented, site_modules)


def _axis_name(
    key: str,
    axis: int,
    label: Label,
    permutation_of: Any,
    composites: dict[str, tuple[Segment, ...]],
) -> str | None:
    segments = tuple(
        Segment(
            None if part.unknown is None else permutation_of(part.unknown), part.units, part.block
        )
        for part in label
    )
    if all(segment.perm is None for segment in segments):
        return None
    if len(segments) == 1 and segments[0].block == 1:
        return segments[0].perm
    name = f"C_{key}[{axis}]"
    composites[name] = segments
    return name


def instrument(graph_module: fx.GraphModule, sites: list[FeatureSite]) -> dict[str, str]:
    """Make every activation call of a traced model a module of its own, at the site's name
    (``layer1.0.relu#2`` for the second call of ``layer1.0.relu``; ``features.relu`` for
    ``F.relu`` called in ``features``' forward), so forward hooks see each call once, and follow
    every residual addition by a :class:`~llfc_core.features.ResidualTap` at its site's name.
    In place; returns the module path of each site."""
    nodes = {node.name: node for node in graph_module.graph.nodes}
    site_modules: dict[str, str] = {}
    existing = {name for name, _ in graph_module.named_modules()}
    for site in sites:
        node = nodes[site.node]
        if site.kind == "residual":
            path = _free_path(site.name, existing)
            graph_module.add_submodule(path, ResidualTap())
            with graph_module.graph.inserting_after(node):
                tap = graph_module.graph.call_module(path, (node,))
            node.replace_all_uses_with(tap, delete_user_cb=partial(operator.is_not, tap))
            site_modules[site.name] = path
            continue
        if node.op == "call_module" and str(node.target) == site.name:
            site_modules[site.name] = site.name
            continue
        if node.op == "call_module":
            replacement = copy.deepcopy(graph_module.get_submodule(str(node.target)))
        else:
            function_module = _as_module(node)
            if function_module is None:
                continue
            replacement = function_module
        path = _free_path(site.name, existing)
        graph_module.add_submodule(path, replacement)
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
