"""Models whose graph holds for one input shape, traced anew for every shape they meet.

Hugging Face's models branch in Python on sizes (building masks, views), which torch.fx can only
follow by running every op on meta tensors as it records it: the graph it gets is valid for the
traced shape alone. :class:`ShapeTracedModel` keeps one instrumented graph per input shape it is
called with (the analysis feeds a few: its batch size, a last partial batch), all calling the
same parameterised modules and the same feature-site modules, so weights, ``state_dict`` and
forward hooks behave as for any model.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import fx, nn

from llfc_core.symmetry.derive import derive_symmetry, instrument

MAX_SHAPES = 8
"""Graphs kept, least recently used out: a job meets two or three input shapes."""


class ShapeTracedModel(nn.Module):
    """``source`` (any module taking one tensor) run through graphs traced per input shape.

    Its children are those of the first graph (traced for ``input_shape`` with a batch of 2):
    the same parameterised modules as ``source``, under the same paths, and the feature sites'
    modules (:func:`~llfc_core.symmetry.derive.instrument`); every later graph is given these
    very children, so moving or loading the model moves or loads what every graph runs.
    ``meta_twin`` is ``source`` built on the meta device, which the tracer runs. In training
    mode the model runs ``source`` itself (the same parameters), whose forward reads the
    training flag.
    """

    _source: nn.Module
    _meta_twin: nn.Module
    _input_dtype: torch.dtype
    _first_shape: tuple[int, ...]
    _graphs: OrderedDict[tuple[int, ...], fx.GraphModule]
    _placed: dict[str, tuple[str, nn.Module]]

    def __init__(
        self,
        source: nn.Module,
        meta_twin: nn.Module,
        input_shape: tuple[int, ...],
        input_dtype: torch.dtype,
    ) -> None:
        super().__init__()
        # Held outside the module tree: the graphs run this model's own children, and the
        # twin is on the meta device.
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_meta_twin", meta_twin.eval())
        object.__setattr__(self, "_input_dtype", input_dtype)
        object.__setattr__(self, "_graphs", OrderedDict())
        object.__setattr__(self, "_placed", {})
        object.__setattr__(self, "_first_shape", (2, *input_shape))
        first = self._traced(source, self._first_shape)
        for name, child in first.named_children():
            self.add_module(name, child)
        self.train(source.training)

    def _traced(self, root: nn.Module, shape: tuple[int, ...]) -> fx.GraphModule:
        derived = derive_symmetry(
            self._meta_twin,
            shape[1:],
            self._input_dtype,
            shape_specific=True,
            batch_size=shape[0],
        )
        graph_module = fx.GraphModule(root, copy.deepcopy(derived.traced.graph))
        for name, child in self.named_children():
            setattr(graph_module, name, child)
        # The first shape's sites are the model's; another shape can show one more (with a
        # batch of 1, GPT-2's token and position embeddings add like a residual stream).
        sites = [
            site for site in derived.feature_sites if not self._placed or site.name in self._placed
        ]
        site_modules = instrument(graph_module, sites, self._placed)
        for site, path in site_modules.items():
            self._placed.setdefault(site, (path, graph_module.get_submodule(path)))
        self._graphs[shape] = graph_module
        return graph_module

    @property
    def graph(self) -> fx.Graph:
        """The graph of the first shape (every shape's calls the same modules in one order)."""
        return self._graphs[self._first_shape].graph

    def train(self, mode: bool = True) -> ShapeTracedModel:
        super().train(mode)
        self._source.train(mode)
        return self

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training:
            # Graphs are traced in eval mode, so code that reads the training flag inside a
            # forward (attention dropout) is fixed in them: training runs the source itself,
            # on the same parameters.
            source_output: torch.Tensor = self._source(inputs)
            return source_output
        shape = tuple(inputs.shape)
        graph_module = self._graphs.get(shape)
        if graph_module is None:
            graph_module = self._traced(self, shape)
            if len(self._graphs) > MAX_SHAPES:
                oldest = next(other for other in self._graphs if other != self._first_shape)
                del self._graphs[oldest]
        else:
            self._graphs.move_to_end(shape)
        output: torch.Tensor = graph_module(inputs)
        return output
