"""Parameters of an analysis, validated once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from llfc_core.errors import InvalidParameterError
from llfc_core.interpolation import check_alpha
from llfc_core.matching.ste import DEFAULT_EPOCHS, DEFAULT_LR, SteConfig
from llfc_core.params import (
    DEFAULT_BATCH_SIZE,
    MATCH_METHODS,
    MATCH_SYMMETRIES,
    MAX_BATCH_SIZE,
    MAX_SEED,
    REPAIR_MODES,
    check_int,
    named,
)

DEFAULT_ALPHAS = tuple(i / 10 for i in range(11))
DEFAULT_LLFC_ALPHAS = (0.25, 0.5, 0.75)
MAX_ALPHAS = 101
MAX_LLFC_ALPHAS = 21
MATCH_CHOICES = ("none", *MATCH_METHODS)
MAX_LAYERS = 10_000
# Job parameters that choose the data rather than the analysis; the caller applies them.
DATA_SELECTION_KEYS = frozenset({"split", "max_examples", "train_dataset"})


def _alphas(value: Any, name: str, limit: int) -> tuple[float, ...]:
    # One number is refused rather than taken as a one-point list: a single alpha draws no
    # curve, and '--param alphas=0.5' more likely meant a step than one point.
    values = (
        list(value)
        if isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping)
        else []
    )
    if not values:
        raise InvalidParameterError(
            f"'{name}' must be a non-empty list of numbers from 0 to 1, e.g. [0, 0.5, 1], "
            f"got {value!r} (on the command line: --param '{name}=[0, 0.5, 1]')."
        )
    if len(values) > limit:
        raise InvalidParameterError(f"'{name}' may hold at most {limit} values, got {len(values)}.")
    return tuple(sorted({check_alpha(alpha) for alpha in values}))


def _repair_modes(value: Any) -> str | tuple[str, ...]:
    """One mode as given, or a list of distinct modes as a tuple in the caller's order."""
    if isinstance(value, str) and value in REPAIR_MODES:
        return value
    if isinstance(value, list | tuple) and value and all(mode in REPAIR_MODES for mode in value):
        return tuple(dict.fromkeys(value))
    raise InvalidParameterError(
        f"'repair' must be one of {', '.join(REPAIR_MODES)} or a non-empty list of them, "
        f'e.g. ["none", "repair"], got {value!r}.'
    )


def _layer_names(value: Any) -> tuple[str, ...]:
    if (
        not isinstance(value, list | tuple)
        or not value
        or len(value) > MAX_LAYERS
        or not all(isinstance(name, str) for name in value)
    ):
        raise InvalidParameterError(
            f"'layers' must be a non-empty list of at most {MAX_LAYERS:,} feature layer names, "
            'e.g. ["layer1.0.relu", "layer4.1.add"] (llfc inspect lists them).'
        )
    return tuple(dict.fromkeys(value))


@dataclass(frozen=True)
class AnalysisConfig:
    """What to measure: LMC on ``alphas``, LLFC and Condition I on ``llfc_alphas``.

    ``match`` is 'none', 'weight' or 'activation', ``symmetry`` the maps it may use
    ('permutation', or 'orthogonal' within attention heads); ``repair`` what is done to
    theta_alpha (:data:`REPAIR_MODES`; a list measures the LMC under each, the first being the
    one every other measurement uses; None: 'reset' for BatchNorm nets, else 'none');
    ``reset_bn`` its older spelling (true: 'reset', false: 'none'); ``layers`` restricts the
    feature layers measured (None: all; the logits always are); ``epochs`` and ``lr`` are STE
    matching's (None: its defaults), refused with any other ``match``.
    """

    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    llfc_alphas: tuple[float, ...] = DEFAULT_LLFC_ALPHAS
    match: str = "none"
    symmetry: str = "permutation"
    batch_size: int = DEFAULT_BATCH_SIZE
    reset_bn: bool | None = None
    repair: str | tuple[str, ...] | None = None
    seed: int = 0
    layers: tuple[str, ...] | None = None
    epochs: int | None = None
    lr: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "alphas", _alphas(self.alphas, "alphas", MAX_ALPHAS))
        object.__setattr__(
            self, "llfc_alphas", _alphas(self.llfc_alphas, "llfc_alphas", MAX_LLFC_ALPHAS)
        )
        if self.match not in MATCH_CHOICES:
            raise InvalidParameterError(
                f"'match' must be one of {', '.join(MATCH_CHOICES)}, got {self.match!r}."
            )
        if self.symmetry not in MATCH_SYMMETRIES:
            raise InvalidParameterError(
                f"'symmetry' must be one of {', '.join(MATCH_SYMMETRIES)}, got {self.symmetry!r}."
            )
        if self.symmetry != "permutation" and self.match == "none":
            raise InvalidParameterError(
                f"'symmetry': {self.symmetry!r} chooses how B is matched onto A, and 'match' is "
                "'none'; name a 'match' method too."
            )
        check_int(self.batch_size, 1, MAX_BATCH_SIZE, "'batch_size'")
        if self.reset_bn is not None and not isinstance(self.reset_bn, bool):
            raise InvalidParameterError(f"'reset_bn' must be true or false, got {self.reset_bn!r}.")
        if self.repair is not None:
            object.__setattr__(self, "repair", _repair_modes(self.repair))
            implied = None if self.reset_bn is None else ("reset" if self.reset_bn else "none")
            if implied is not None and implied != self.repair_modes(True)[0]:
                raise InvalidParameterError(
                    f"'reset_bn': {str(self.reset_bn).lower()} asks for 'repair': {implied!r}, "
                    f"and 'repair' asks for {self.repair_modes(True)[0]!r}; give only 'repair' "
                    "('reset_bn' is its older spelling)."
                )
        check_int(self.seed, 0, MAX_SEED, "'seed'")
        if self.layers is not None:
            object.__setattr__(self, "layers", _layer_names(self.layers))
        self.ste_config()

    def ste_config(self) -> SteConfig | None:
        """STE's parameters when ``match`` is 'ste' (validated), else None; 'epochs' or 'lr'
        with another ``match`` is refused."""
        given = (("epochs", self.epochs), ("lr", self.lr))
        chosen = {key: value for key, value in given if value is not None}
        if self.match != "ste":
            if chosen:
                raise InvalidParameterError(
                    f"{named(sorted(chosen))} set(s) STE matching's training; 'match' is "
                    f'{self.match!r}. Use "match": "ste" or leave them out.'
                )
            return None
        return SteConfig(
            DEFAULT_EPOCHS if self.epochs is None else self.epochs,
            DEFAULT_LR if self.lr is None else self.lr,
        )

    def check_layers(self, available: list[str]) -> None:
        """Refuse ``layers`` naming a feature layer the arch does not have."""
        if self.layers is None:
            return
        unknown = [name for name in self.layers if name not in available]
        if unknown:
            shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
            raise InvalidParameterError(
                f"'layers' names {', '.join(map(repr, unknown[:5]))}, not a feature layer of "
                f"this arch; its layers are {shown} (llfc inspect lists them all)."
            )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AnalysisConfig:
        """Build from job parameters; unknown keys are refused so typos do not pass silently."""
        known = set(ANALYSIS_FIELDS)
        unknown = sorted(set(params) - known - DATA_SELECTION_KEYS)
        if unknown:
            raise InvalidParameterError(
                f"Unknown analyze parameter(s) {named(unknown)}; "
                f"known ones are {', '.join(sorted(known | DATA_SELECTION_KEYS))}."
            )
        return cls(**{key: params[key] for key in known if key in params})

    def repair_modes(self, has_batch_norm: bool) -> tuple[str, ...]:
        """The repairs to measure, the first being the one every measurement uses."""
        if isinstance(self.repair, tuple):
            return self.repair
        if isinstance(self.repair, str):
            return (self.repair,)
        reset = has_batch_norm if self.reset_bn is None else self.reset_bn
        return ("reset",) if reset else ("none",)

    @property
    def compares_repairs(self) -> bool:
        """Whether 'repair' was a list: each pair then reports the LMC under each repair."""
        return isinstance(self.repair, tuple)

    @property
    def all_alphas(self) -> tuple[float, ...]:
        """Every alpha at which theta_alpha is evaluated."""
        return tuple(sorted(set(self.alphas) | set(self.llfc_alphas)))


ANALYSIS_FIELDS = tuple(field.name for field in fields(AnalysisConfig))
"""The job parameters an :class:`AnalysisConfig` is built from."""


def alpha_key(alpha: float) -> str:
    """The JSON key of an alpha: 0.5 -> '0.5', 0.25 -> '0.25'."""
    return f"{alpha:g}"
