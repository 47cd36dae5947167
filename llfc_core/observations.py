"""Where a model shows the units of each permutation: its feature sites, or the outputs of the
layers that produce them (an attention's query, key and value projections have no feature
site of their own). Activation matching correlates A's and B's units there; the inspect report
lists them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llfc_core.features import is_transposed_linear
from llfc_core.permutation import PermutationSpec


@dataclass(frozen=True)
class Observation:
    """Where the units of a permutation are seen: entries ``start`` to ``stop`` (None: all) of
    axis ``axis`` of module ``module``'s output; ``feature_site``: an activation or residual tap
    (whose pre-activations break ties between dead units) rather than a producing layer."""

    module: str
    axis: int
    feature_site: bool
    start: int = 0
    stop: int | None = None

    @property
    def label(self) -> str:
        return self.module if self.stop is None else f"{self.module}[{self.start}:{self.stop}]"

    def units(self, output: torch.Tensor) -> torch.Tensor:
        """(N, ..., C on ``axis``, ...) -> (observations, C): every other position of an
        example is one observation (a view, no copy, for units already last and whole)."""
        moved = output.movedim(self.axis, -1)
        if self.stop is not None:
            moved = moved[..., self.start : self.stop]
        return moved.reshape(-1, moved.shape[-1])


def _output_axes(module: nn.Module) -> tuple[int, int] | None:
    """(the weight's output axis, the output's units axis) of a layer, None for other modules."""
    if is_transposed_linear(module):
        return 1, -1
    if isinstance(module, nn.Linear):
        return 0, -1
    if isinstance(module, nn.Conv2d):
        return 0, 1
    return None


def observed_units(spec: PermutationSpec, model: nn.Module) -> dict[str, list[Observation]]:
    """Where each permutation is observed: its feature sites, or else the outputs of the layers
    that produce its units. A permutation seen nowhere is left out."""
    modules = dict(model.named_modules())
    observed: dict[str, list[Observation]] = {}
    for name, uses in spec.perm_to_uses.items():
        sites = spec.perm_to_features.get(name, ())
        if sites:
            observed[name] = [
                Observation(site, spec.feature_axes.get(site, 1), feature_site=True)
                for site in sites
            ]
            continue
        producers = []
        for use in uses:
            module_name, _, parameter = use.key.rpartition(".")
            module = modules.get(module_name)
            axes = _output_axes(module) if module is not None and parameter == "weight" else None
            if axes is None or axes[0] != use.axis or use.block != 1:
                continue
            stop = None if use.units is None else use.offset + use.units
            producers.append(Observation(module_name, axes[1], False, use.offset, stop))
        if producers:
            observed[name] = producers
    return observed
