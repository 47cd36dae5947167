"""Models of the torchvision and timm zoos, by name, as labs train them.

``{"name": "torchvision", "model": "resnet18", "kwargs": {"num_classes": 10}}`` builds
``torchvision.models.get_model("resnet18", weights=None, num_classes=10)``;
``{"name": "timm", "model": "resnet18", "kwargs": {"in_chans": 1, "num_classes": 10}}`` builds
``timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=10)``. Nothing is
downloaded: pretrained weights are never asked for, and the kwargs that would fetch or read them
are refused. Checkpoint keys are the library's own ``state_dict()`` keys.

The model is the library's, traced into a graph (:mod:`llfc_core.symmetry`), with each
activation call a module of its own so that LLFC can measure every call. ``input_shape``
(``[C, H, W]``) is what the graph is traced with and datasets are fitted to; by default timm's
own config for the model, ``[3, 224, 224]`` for torchvision.
"""

from __future__ import annotations

import difflib
import inspect
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from llfc_core.archs.base import Architecture, reject_unknown_fields
from llfc_core.errors import ArchitectureError
from llfc_core.graph_lock import GRAPH_LOCK
from llfc_core.params import check_int
from llfc_core.symmetry.derive import instrument, trace

MAX_INPUT_DIM = 4096
MAX_MODULES = 10_000
"""Modules a zoo model may have (resnet152 has 423, convnext_xxlarge about 1,000)."""
MAX_INPUT_RANK = 4
CLOSE_MATCHES = 5
FIXED_KWARGS = ("weights", "pretrained")
"""The kwargs this module passes itself, never the user's."""
UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '([^']+)'")
JsonValue = Any
FORBIDDEN_KWARGS = {
    "weights",
    "weights_backbone",
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "pretrained_strict",
    "checkpoint_path",
    "cache_dir",
    "features_only",
    "scriptable",
    "exportable",
}
"""Arguments that download or read weights, or change what the model returns."""
TORCHVISION_DEFAULT_INPUT = (3, 224, 224)


def _frozen(value: JsonValue) -> JsonValue:
    """A JSON value as a hashable one (lists become tuples), so equal archs compare equal."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(item) for item in value)
    if isinstance(value, dict):
        raise ArchitectureError(
            "The arch's 'kwargs' values must be numbers, strings, booleans or lists."
        )
    return value


@dataclass(frozen=True)
class ZooArchitecture(Architecture):
    """A model of a library's zoo, with its constructor's keyword arguments."""

    model: str
    kwargs: tuple[tuple[str, JsonValue], ...] = ()
    shape: tuple[int, ...] | None = None
    """``input_shape`` as given; None for the model's default."""

    name: ClassVar[str]

    @classmethod
    def known_models(cls) -> list[str]:
        raise NotImplementedError

    def construct(self) -> nn.Module:
        raise NotImplementedError

    def default_input_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> ZooArchitecture:
        reject_unknown_fields(spec, {"model", "kwargs", "input_shape"})
        model = spec.get("model")
        known = cls.known_models()
        if not isinstance(model, str) or model not in known:
            close = difflib.get_close_matches(str(model), known, n=CLOSE_MATCHES, cutoff=0.6)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ArchitectureError(
                f"The {cls.name} zoo has no model {model!r}.{hint} The arch's 'model' must be "
                f"one of the {len(known)} names {cls.name} lists."
            )
        kwargs = spec.get("kwargs", {})
        if not isinstance(kwargs, Mapping):
            raise ArchitectureError(
                f"The arch's 'kwargs' must be a JSON object of {model}'s constructor arguments."
            )
        forbidden = sorted(set(kwargs) & FORBIDDEN_KWARGS)
        if forbidden:
            raise ArchitectureError(
                f"The arch's kwargs may not set {', '.join(forbidden)}: nothing is downloaded or "
                "read from disk; upload the weights as a checkpoint instead."
            )
        shape = spec.get("input_shape")
        arch = cls(
            model=model,
            kwargs=tuple(sorted((str(key), _frozen(value)) for key, value in kwargs.items())),
            shape=None if shape is None else _input_shape(shape),
        )
        arch.check_builds()
        return arch

    def check_builds(self) -> None:
        """Build on the meta device once, so bad kwargs are a sentence now, not a failed job."""
        _meta_facts(self)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.shape if self.shape is not None else self.default_input_shape()

    @property
    def num_classes(self) -> int:
        return _meta_facts(self).num_classes

    @property
    def has_batch_norm(self) -> bool:
        return _meta_facts(self).has_batch_norm

    def num_params(self) -> int:
        # Counted on the model built to check the kwargs: the parameter cap then needs no
        # second build and trace.
        return _meta_facts(self).num_params

    def source_model(self) -> nn.Module:
        return self.construct()

    def trainable_model(self) -> nn.Module:
        return self.construct()

    def build(self) -> nn.Module:
        graph_module = trace(self.construct().eval())
        instrument(graph_module, self.symmetry().feature_sites)
        return graph_module

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "kwargs": {key: _thawed(value) for key, value in self.kwargs},
            "input_shape": list(self.input_shape),
        }


def _thawed(value: JsonValue) -> JsonValue:
    return [_thawed(item) for item in value] if isinstance(value, tuple) else value


def _input_shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_INPUT_RANK:
        raise ArchitectureError(
            "The arch's 'input_shape' must be a list of 1 to 4 integers, such as [3, 32, 32]."
        )
    for size in value:
        check_int(
            size, 1, MAX_INPUT_DIM, "Every input_shape entry", ArchitectureError, grouped=True
        )
    return tuple(value)


@dataclass(frozen=True)
class _MetaFacts:
    num_classes: int
    has_batch_norm: bool
    num_params: int


@lru_cache(maxsize=64)
def _meta_facts(arch: ZooArchitecture) -> _MetaFacts:
    """What one build and forward pass on the meta device show: the kwargs work, the model
    runs on ``input_shape``, and how many outputs it has."""
    try:
        with torch.device("meta"):
            model = arch.construct().eval()
            with GRAPH_LOCK:
                output = model(torch.empty((2, *arch.input_shape)))
    except ArchitectureError:
        raise
    except Exception as error:  # the library's own sentence, whatever its type
        raise ArchitectureError(
            f"The {arch.name} model {arch.model} cannot be built and run on inputs of shape "
            f"{list(arch.input_shape)} with kwargs {dict(arch.kwargs)} "
            f"({type(error).__name__}: {error})."
        ) from error
    finally:
        _constructing.count = None
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise ArchitectureError(
            f"The {arch.name} model {arch.model} must return logits of shape [batch, classes]; "
            "it returns something else with these kwargs."
        )
    has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    num_params = sum(parameter.numel() for parameter in model.parameters())
    return _MetaFacts(int(output.shape[1]), has_batch_norm, num_params)


@dataclass(frozen=True)
class TorchvisionArchitecture(ZooArchitecture):
    name: ClassVar[str] = "torchvision"

    @classmethod
    def known_models(cls) -> list[str]:
        import torchvision

        return sorted(torchvision.models.list_models(module=torchvision.models))

    def construct(self) -> nn.Module:
        import torchvision

        return _called(torchvision.models.get_model, self.model, weights=None, **dict(self.kwargs))

    def default_input_shape(self) -> tuple[int, ...]:
        return TORCHVISION_DEFAULT_INPUT


@dataclass(frozen=True)
class TimmArchitecture(ZooArchitecture):
    name: ClassVar[str] = "timm"

    @classmethod
    def known_models(cls) -> list[str]:
        return _timm_models()

    def construct(self) -> nn.Module:
        import timm

        return _called(timm.create_model, self.model, pretrained=False, **dict(self.kwargs))

    def default_input_shape(self) -> tuple[int, ...]:
        import timm

        config = timm.get_pretrained_cfg(self.model)
        size = tuple(config.input_size) if config is not None else (3, 224, 224)
        kwargs = dict(self.kwargs)
        channels = kwargs.get("in_chans", size[0])
        # A vision transformer built for another image size (img_size=8) takes only that size.
        image = kwargs.get("img_size")
        if isinstance(image, int) and not isinstance(image, bool):
            return (int(channels), image, image)
        if isinstance(image, tuple) and len(image) == 2 and all(isinstance(s, int) for s in image):
            return (int(channels), *image)
        return (int(channels), *size[1:])


@lru_cache(maxsize=1)
def _timm_models() -> list[str]:
    import timm

    return sorted(timm.list_models())


class _ModuleCount(threading.local):
    """Modules registered so far by the construction running in this thread, or None."""

    count: int | None = None


_constructing = _ModuleCount()


def _count_registration(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
    if _constructing.count is None:
        return
    _constructing.count += 1
    if _constructing.count > MAX_MODULES:
        raise ArchitectureError(
            f"The model has more than {MAX_MODULES:,} modules; lower its depth or width kwargs."
        )


# Process-wide, but counting only inside _called, per thread: kwargs such as a depth of a
# million would otherwise build for minutes and take gigabytes before the parameter cap is
# ever checked.
register_module_module_registration_hook(_count_registration)


def _called(factory: Callable[..., nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    _constructing.count = 0
    try:
        return factory(*args, **kwargs)
    except ArchitectureError:
        raise
    except Exception as error:  # an unknown kwarg, a bad value: the library's own sentence
        raise ArchitectureError(
            f"The model {args[0]} cannot be built with kwargs "
            f"{ {k: v for k, v in kwargs.items() if k not in FIXED_KWARGS} } "
            f"({type(error).__name__}: {error}).{_kwarg_hint(factory, args, kwargs, error)}"
        ) from error
    finally:
        _constructing.count = None


def _kwarg_hint(
    factory: Callable[..., nn.Module],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: Exception,
) -> str:
    """For an unexpected keyword, the close matches among what the model's class takes (read
    off the class of the model built without the user's kwargs, on the meta device)."""
    unexpected = UNEXPECTED_KEYWORD.search(str(error))
    if not isinstance(error, TypeError) or unexpected is None:
        return ""
    fixed = {key: value for key, value in kwargs.items() if key in FIXED_KWARGS}
    try:
        with torch.device("meta"):
            default = _called(factory, *args, **fixed)
    except ArchitectureError:
        return ""
    taken = [
        name
        for name in inspect.signature(type(default).__init__).parameters
        if name not in ("self", "args", "kwargs")
    ]
    close = difflib.get_close_matches(unexpected.group(1), taken, n=CLOSE_MATCHES, cutoff=0.6)
    return f" Close matches: {', '.join(close)}." if close else ""
