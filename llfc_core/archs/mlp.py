"""The MLP: ``nn.Sequential(Linear, ReLU, ..., Linear)``; keys ``0.weight``, ``0.bias``, ...."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from llfc_core.archs.base import Architecture, reject_unknown_fields
from llfc_core.errors import ArchitectureError
from llfc_core.params import check_int

MAX_WIDTH = 1_000_000
MAX_LAYERS = 64


@dataclass(frozen=True)
class MLP(Architecture):
    """``widths = [inputs, hidden..., classes]``; a ReLU follows every Linear but the last."""

    widths: tuple[int, ...]
    name: ClassVar[str] = "mlp"

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> MLP:
        reject_unknown_fields(spec, {"widths"})
        widths = spec.get("widths")
        if not isinstance(widths, list) or not 2 <= len(widths) <= MAX_LAYERS + 1:
            raise ArchitectureError(
                f"The mlp arch needs 'widths', a list of 2 to {MAX_LAYERS + 1} integers "
                "[inputs, hidden..., classes]."
            )
        for width in widths:
            check_int(width, 1, MAX_WIDTH, "Every mlp width", ArchitectureError, grouped=True)
        return cls(widths=tuple(widths))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.widths[0],)

    @property
    def num_classes(self) -> int:
        return self.widths[-1]

    def build(self) -> nn.Module:
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(
            zip(self.widths[:-1], self.widths[1:], strict=True)
        ):
            layers.append(nn.Linear(fan_in, fan_out))
            if index < len(self.widths) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "widths": list(self.widths)}
