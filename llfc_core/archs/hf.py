"""Hugging Face ``transformers`` language models, built from their config alone.

``{"name": "transformers", "model": "gpt2", "config": {"n_layer": 2, "n_embd": 32, ...}}`` builds
``GPT2LMHeadModel(GPT2Config(**config))``: randomly initialised, nothing downloaded or read from
disk, ever. Checkpoint keys are the library's own (``transformer.wte.weight``,
``transformer.h.0.attn.c_attn.weight``, ..., ``lm_head.weight``), so a lab's
``model.state_dict()`` uploads as it is.

The model reads token ids (N x T integers) and its logits are (N x T x vocab): the arch's task is
next-token prediction (:data:`llfc_core.tasks.NEXT_TOKEN`) and it reads token datasets. Its
``input_shape`` is ``(T,)``, the sequence length it is traced with and its memory estimated for:
``n_positions`` unless the arch gives ``"input_shape": [T]``.

With ``tie_word_embeddings`` (GPT-2's default) ``lm_head.weight`` is ``transformer.wte.weight``:
a state dict holds both keys, equal, and both move alike under interpolation and permutation.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import torch
from torch import nn

from llfc_core.archs.base import Architecture, reject_unknown_fields
from llfc_core.archs.shape_traced import ShapeTracedModel
from llfc_core.errors import ArchitectureError
from llfc_core.params import check_int
from llfc_core.tasks import NEXT_TOKEN, Task

MODELS = ("gpt2",)
"""The model types this arch builds."""
MAX_VOCAB = 1_000_000
MAX_POSITIONS = 65_536
MAX_WIDTH = 65_536
MAX_LAYERS = 256
"""With about a dozen modules per block, this keeps a model under the zoo's 10,000 modules."""
MAX_HEADS = 1_024
ACTIVATIONS = (
    "gelu_new",
    "gelu",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "gelu_accurate",
    "quick_gelu",
    "relu",
    "silu",
    "swish",
    "tanh",
    "sigmoid",
    "mish",
)
"""GPT-2's ``activation_function`` choices that act elementwise with no weights of their own."""
CLOSE_MATCHES = 5
GPT2_SPECIAL_TOKEN = 50_256
JsonValue = Any


@dataclass(frozen=True)
class _Field:
    """One config key a lab may set: its GPT-2 default and how it is checked."""

    default: JsonValue
    kind: str
    """'int', 'optional int', 'probability', 'positive', 'bool' or 'activation'."""
    high: int = 0


GPT2_FIELDS: dict[str, _Field] = {
    "vocab_size": _Field(50_257, "int", MAX_VOCAB),
    "n_positions": _Field(1_024, "int", MAX_POSITIONS),
    "n_embd": _Field(768, "int", MAX_WIDTH),
    "n_layer": _Field(12, "int", MAX_LAYERS),
    "n_head": _Field(12, "int", MAX_HEADS),
    "n_inner": _Field(None, "optional int", 4 * MAX_WIDTH),
    "activation_function": _Field("gelu_new", "activation"),
    "resid_pdrop": _Field(0.1, "probability"),
    "embd_pdrop": _Field(0.1, "probability"),
    "attn_pdrop": _Field(0.1, "probability"),
    "layer_norm_epsilon": _Field(1e-5, "positive"),
    "initializer_range": _Field(0.02, "positive"),
    "scale_attn_weights": _Field(True, "bool"),
    "scale_attn_by_inverse_layer_idx": _Field(False, "bool"),
    "tie_word_embeddings": _Field(True, "bool"),
}
"""The config keys of ``{"model": "gpt2"}``; any other key is refused (the token ids, the cache
and the attention implementation are this module's to set)."""


def _checked(key: str, field: _Field, value: JsonValue) -> JsonValue:
    described = f"The gpt2 config's '{key}'"
    if field.kind == "int":
        return check_int(value, 1, field.high, described, ArchitectureError, grouped=True)
    if field.kind == "optional int":
        if value is None:
            return None
        return check_int(value, 1, field.high, described, ArchitectureError, grouped=True)
    if field.kind == "bool":
        if not isinstance(value, bool):
            raise ArchitectureError(f"{described} must be true or false, got {value!r}.")
        return value
    if field.kind == "activation":
        if value not in ACTIVATIONS:
            raise ArchitectureError(
                f"{described} must be one of {', '.join(ACTIVATIONS)}, got {value!r}."
            )
        return value
    real = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if field.kind == "probability" and not (real and 0.0 <= value <= 1.0):
        raise ArchitectureError(f"{described} must be a number from 0 to 1, got {value!r}.")
    if field.kind == "positive" and not (real and 0.0 < value <= 1.0):
        raise ArchitectureError(f"{described} must be a number in (0, 1], got {value!r}.")
    return float(value)


class CausalLM(nn.Module):
    """A ``transformers`` causal language model as the engine runs it: token ids (N, T) in,
    logits (N, T, vocab) out, as a plain tensor.

    The library's model's children (``transformer``, ``lm_head``) are this module's children, so
    its parameters, hooks and state-dict keys are the library's own; the library's model itself
    is kept beside them, unregistered, to run its forward (called directly: this module's hooks
    are the engine's, not the library's).
    """

    _library_model: nn.Module

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_library_model", model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        output = self._library_model.forward(input_ids=input_ids, use_cache=False)
        logits: torch.Tensor = output.logits
        return logits

    def train(self, mode: bool = True) -> CausalLM:
        super().train(mode)
        # The children follow; the library's model reads its own flag too.
        self._library_model.training = mode
        return self


@dataclass(frozen=True)
class TransformersArchitecture(Architecture):
    """A ``transformers`` language model of type ``model``, built from ``config``."""

    model: str
    config: tuple[tuple[str, JsonValue], ...]
    """Every config key of the model, defaults filled in, sorted by name."""
    sequence_length: int

    name: ClassVar[str] = "transformers"
    traced_per_shape: ClassVar[bool] = True

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> TransformersArchitecture:
        reject_unknown_fields(spec, {"model", "config", "input_shape"})
        model = spec.get("model")
        if model not in MODELS:
            close = difflib.get_close_matches(str(model), MODELS, n=CLOSE_MATCHES, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ArchitectureError(
                f"The transformers arch builds only the model 'gpt2' for now, got {model!r}.{hint}"
            )
        given = spec.get("config", {})
        if not isinstance(given, Mapping):
            raise ArchitectureError(
                "The transformers arch's 'config' must be a JSON object of GPT2Config fields, "
                'such as {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 16}.'
            )
        unknown = sorted(set(given) - set(GPT2_FIELDS))
        if unknown:
            close = [
                match
                for key in unknown
                for match in difflib.get_close_matches(str(key), GPT2_FIELDS, n=1, cutoff=0.6)
            ]
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ArchitectureError(
                f"The gpt2 config does not take {', '.join(map(repr, unknown))}.{hint} It takes "
                f"{', '.join(sorted(GPT2_FIELDS))}; nothing is downloaded, so no pretrained "
                "name or path is read."
            )
        config = {
            key: _checked(key, field, given.get(key, field.default))
            for key, field in GPT2_FIELDS.items()
        }
        if config["n_embd"] % config["n_head"]:
            raise ArchitectureError(
                f"The gpt2 config's n_embd ({config['n_embd']}) must be a multiple of n_head "
                f"({config['n_head']}): each head gets n_embd / n_head dimensions."
            )
        length = spec.get("input_shape", [config["n_positions"]])
        if not isinstance(length, list) or len(length) != 1:
            raise ArchitectureError(
                "The transformers arch's 'input_shape' must be [T], one sequence length, such "
                f"as [{config['n_positions']}]."
            )
        # Next-token prediction needs a next token: a sequence of one predicts nothing.
        sequence_length = check_int(
            length[0],
            2,
            max(2, config["n_positions"]),
            "The input_shape's sequence length (at least 2, at most n_positions)",
            ArchitectureError,
            grouped=True,
        )
        return cls(model, tuple(sorted(config.items())), sequence_length)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.sequence_length,)

    @property
    def num_classes(self) -> int:
        return int(dict(self.config)["vocab_size"])

    @property
    def task(self) -> Task:
        return NEXT_TOKEN

    def random_inputs(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` sequences of ``input_shape`` of uniformly random token ids."""
        return torch.randint(0, self.num_classes, (count, *self.input_shape), generator=generator)

    def discarded_keys(self, keys: Iterable[str]) -> set[str]:
        # transformers before 4.x saved every attention's causal mask ("attn.bias") and its
        # fill value ("attn.masked_bias") as buffers; today's GPT-2 builds them on the fly and
        # the library drops them on load.
        return {key for key in keys if OLD_ATTENTION_BUFFERS.fullmatch(key)}

    def tied_tensors(self) -> dict[str, str]:
        if dict(self.config)["tie_word_embeddings"]:
            return {"lm_head.weight": "transformer.wte.weight"}
        return {}

    def construct(self) -> nn.Module:
        """The library's model, as a :class:`CausalLM`, on the current default device."""
        from transformers import GPT2Config, GPT2LMHeadModel

        config: dict[str, Any] = dict(self.config)
        # GPT-2's token id 50256 (bos and eos) lies outside a small vocabulary, which the
        # library warns about; no token is special here.
        if config["vocab_size"] <= GPT2_SPECIAL_TOKEN:
            config.update(bos_token_id=None, eos_token_id=None)
        config.update(use_cache=False, attn_implementation=_causal_sdpa())
        return CausalLM(GPT2LMHeadModel(GPT2Config(**config)))

    def source_model(self) -> nn.Module:
        return self.construct()

    def trainable_model(self) -> nn.Module:
        return self.construct()

    def build(self) -> nn.Module:
        source = self.construct()
        # A twin of its own even when ``source`` is on the meta device: a model built there is
        # often given real storage afterwards (``to_empty``), which the tracer must not run.
        with torch.device("meta"):
            twin = self.construct()
        return ShapeTracedModel(source, twin, self.input_shape, torch.long)

    def num_params(self) -> int:
        return _meta_num_params(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "config": dict(self.config),
            "input_shape": list(self.input_shape),
        }


OLD_ATTENTION_BUFFERS = re.compile(
    r"transformer\.h\.\d+\.(attn|crossattention)\.(bias|masked_bias)"
)
"""Buffers of GPT-2 attention that older transformers releases saved in state dicts."""
CAUSAL_SDPA = "llfc_causal_sdpa"


@lru_cache(maxsize=1)
def _causal_sdpa() -> str:
    """The name of the attention the models run: the library's own scaled-dot-product attention
    with its causal mask (``is_causal``), registered under a name of ours.

    Under the name ``"sdpa"`` the library also inspects the position ids of every batch for
    several sequences packed into one (a data-dependent branch): a host synchronisation per
    forward pass on a GPU, and a failure on the meta device, where footprints are measured and
    graphs traced. Sequences here are never packed, and with no mask to build the library leaves
    the causal mask to ``is_causal``, which is what ``"sdpa"`` computes for unpadded sequences,
    bit for bit.
    """
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register(CAUSAL_SDPA, sdpa_attention_forward)
    return CAUSAL_SDPA


@lru_cache(maxsize=64)
def _meta_num_params(arch: TransformersArchitecture) -> int:
    """Learned parameters, counted once on the model built on the meta device (a tied
    embedding and head count once, as ``parameters()`` yields a shared tensor once)."""
    with torch.device("meta"):
        model = arch.construct()
    return sum(parameter.numel() for parameter in model.parameters())
