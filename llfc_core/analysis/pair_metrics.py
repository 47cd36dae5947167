"""One streaming pass over the data that measures everything about a pair (A, B).

Per batch, A and B run once with hooks on every feature site (an activation: input =
pre-activation h, output = feature f; or a residual tap, where h = f) and on every Linear/Conv2d
(input H, output W H + b); each theta_alpha runs once. From those:

- LMC: loss and error of theta_alpha for every alpha in ``config.alphas``, as the arch's task
  counts them (:mod:`llfc_core.tasks`: per example, or per next token of a language model).
- LLFC, per layer l (each feature site, then the logits) and alpha in ``config.llfc_alphas``:
  E_x[d_cos(f_l(theta_alpha; x), alpha f_l(A; x) + (1 - alpha) f_l(B; x))], the baseline
  E_x[d_cos(f_l(A; x), f_l(B; x))], and c = sum <f_alpha, target> / sum ||f_alpha||^2.
- Condition I, per activation layer (act: ReLU, GELU, SiLU...) and alpha:
  E_x[d_rel(act(alpha h_A + (1 - alpha) h_B), alpha act(h_A) + (1 - alpha) act(h_B))].
- Condition II, per weighted layer: d_rel(W_A H_A + W_B H_B, W_A H_B + W_B H_A) over the data
  matrix, whose difference is (W_A - W_B)(H_A - H_B) (the poster's Eq. 2), beside the factors
  d_rel(W_A, W_B) and d_rel(H_A, H_B).

Only sums are kept between batches, so memory depends on the batch size and the model, never on
the number of examples. Distances are defined in :mod:`llfc_core.metrics`.

How the pass avoids work and memory without changing the numbers:

- A's tensors are kept for the batch; hooks compare B's with them the moment B produces them
  (cos_ab, Condition I, Condition II), and A's pre-activations and layer inputs are dropped as
  soon as they have been used. theta_alpha's features are compared by hooks too, never stored.
- theta_1 is A and theta_0 is B exactly (``torch.lerp`` returns its endpoints exactly and the
  BatchNorm re-estimation is deterministic), so neither is built or run again. The other
  theta_alpha share one work model when that saves memory (see :class:`_Path`).
- Every model sees the same input x, and the layer that reads x is linear: theta_alpha's output
  there is alpha (W_A x + b_A) + (1 - alpha)(W_B x + b_B), a mix of A's and B's outputs. That
  layer of theta_alpha is replaced by the mix (for the MLP 784-512-512-512-10, 43% of its FLOPs).
- Condition II: W_B H_B is B's layer output less its bias; W_A H_A likewise where A's forward
  leaves the output for free (the input layer; a layer whose output is a ReLU's input, as in an
  MLP), otherwise it is recomputed from H_A, which costs less than keeping every output of A for
  the batch. (W_A - W_B)(H_A - H_B) costs one product, none at the input layer (H_A = H_B = x).
- Elementwise work stays in float32; per-example sums are float32 reductions (pairwise, so
  their relative error stays near 1e-7 even over 65k features) combined in float64, and running
  totals are float64 tensors on the device (no host synchronisation per batch). The cosine of
  identical features is exactly 1: <u, v>, ||u||^2 and ||v||^2 are then the same reduction of
  the same products.
- On CPU, conv nets run in channels_last: oneDNN's convolutions are ~25% faster in NHWC
  (VGG-16, batch 256: 0.74 s -> 0.57 s). Per-example sums do not depend on memory order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llfc_core.analysis.config import AnalysisConfig, alpha_key
from llfc_core.analysis.per_model import PerModel
from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset
from llfc_core.features import (
    Scratch,
    feature_site_names,
    is_activation_module,
    is_transposed_linear,
    watch_features,
    weighted_layer_names,
)
from llfc_core.interpolation import interpolate_states
from llfc_core.metrics import relative_squared_distance_from_sums
from llfc_core.models import load_model
from llfc_core.progress import Reporter
from llfc_core.repair import PathRepair, settle_endpoint
from llfc_core.tasks import Task
from llfc_results import Lemma, Llfc, Lmc, LossError, PairResult

LOGITS = "logits"
TINY = 1e-300
CHUNK_VALUES = 1 << 22
"""Values per metric temporary on the CPU (16 MB in float32, near its caches): e.g. 64 examples
of a 64x32x32 feature map."""
GPU_CHUNK_VALUES = 1 << 24
"""Values per metric temporary on a GPU (64 MB): a whole default batch of 256 such maps in one
chunk, so each metric is a few large kernels rather than four times as many small ones. The
chunks split examples, never one example's sums: the numbers are the same to rounding."""


def chunk_values(device: torch.device) -> int:
    """The most values a metric temporary holds on ``device``."""
    return GPU_CHUNK_VALUES if device.type == "cuda" else CHUNK_VALUES


def _apply_layer(module: nn.Module, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's linear map with ``weight`` in place of its own (bias left out: it cancels)."""
    if isinstance(module, nn.Conv2d):
        return F.conv2d(
            inputs, weight, None, module.stride, module.padding, module.dilation, module.groups
        )
    if is_transposed_linear(module):
        return inputs @ weight
    return F.linear(inputs, weight)


def _example_chunks(*tensors: torch.Tensor) -> list[slice]:
    """Consecutive ranges of examples holding at most :func:`chunk_values` values of the largest
    tensor, so the metrics' temporaries stay small whatever the batch size and layer size."""
    examples = tensors[0].shape[0]
    per_example = max(tensor[0].numel() for tensor in tensors) if examples else 1
    rows = max(1, chunk_values(tensors[0].device) // per_example)
    return [slice(start, start + rows) for start in range(0, examples, rows)]


def _per_example(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over every axis but the first, in the tensor's own memory order (no copy)."""
    return tensor.sum(dim=tuple(range(1, tensor.dim())))


def _cosine_distance(dot: torch.Tensor, norm_u: torch.Tensor, norm_v: torch.Tensor) -> torch.Tensor:
    """Per example 1 - <u, v> / (||u|| ||v||) from the sums <u, v>, ||u||^2, ||v||^2, in float64;
    0 when both are zero, 1 when one is (as :func:`llfc_core.metrics.cosine_distance`)."""
    dot, norm_u, norm_v = dot.double(), norm_u.double(), norm_v.double()
    cosine = (dot / (norm_u * norm_v).sqrt().clamp_min(TINY)).clamp(-1.0, 1.0)
    both_zero = (norm_u == 0) & (norm_v == 0)
    return torch.where(both_zero, torch.zeros_like(cosine), 1.0 - cosine)


def _relative_squared_distance(
    squared_difference: torch.Tensor, squared_norm_u: torch.Tensor, squared_norm_v: torch.Tensor
) -> torch.Tensor:
    """Per example ||u - v||^2 / (0.5 (||u||^2 + ||v||^2)) from those sums, in float64; 0 when both
    are zero (as :func:`llfc_core.metrics.relative_squared_distance`)."""
    numerator = squared_difference.double()
    denominator = 0.5 * (squared_norm_u.double() + squared_norm_v.double())
    return torch.where(
        denominator > 0, numerator / denominator.clamp_min(TINY), torch.zeros_like(numerator)
    )


def _prefers_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether the model has convolutions that run faster in NHWC here (oneDNN on CPU)."""
    return device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())


class _Totals:
    """Running sums over examples, as float64 tensors on the device, read once at the end."""

    def __init__(self) -> None:
        self._sums: dict[tuple[Any, ...], torch.Tensor] = {}

    def add(self, key: tuple[Any, ...], values: torch.Tensor) -> None:
        total = values.double().sum()
        previous = self._sums.get(key)
        self._sums[key] = total if previous is None else previous + total

    def get(self, *key: Any) -> float:
        return float(self._sums[key]) if key in self._sums else 0.0


class _GivenOutput(nn.Module):
    """Stands in for theta_alpha's input layer: returns the mix of A's and B's outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.output: torch.Tensor | None = None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.output is None:
            raise RuntimeError("The input layer's output was not set before the forward pass.")
        return self.output


@dataclass(frozen=True)
class _Probe:
    """What one example through A shows about how the model is wired."""

    input_layers: list[str]
    """Weighted layers that read the model's input tensor itself."""
    relu_of_layer: dict[str, str]
    """Weighted layer -> the feature site whose input is that layer's output tensor itself."""
    features_per_example: int
    """Values in all feature sites' outputs of one example."""


def _probe(
    model: nn.Module, example: torch.Tensor, relus: list[str], weighted: list[str]
) -> _Probe:
    outputs: dict[str, torch.Tensor] = {}
    input_layers: list[str] = []
    relu_of_layer: dict[str, str] = {}
    features = 0

    def on_layer(name: str, layer_input: torch.Tensor, output: torch.Tensor) -> None:
        if layer_input is example:
            input_layers.append(name)
        outputs[name] = output

    def on_relu(name: str, pre_activation: torch.Tensor, output: torch.Tensor) -> None:
        nonlocal features
        features += output[0].numel()
        for layer, layer_output in outputs.items():
            if pre_activation is layer_output:
                relu_of_layer[layer] = name

    with (
        torch.inference_mode(),
        watch_features(model, relus=relus, on_relu=on_relu, layers=weighted, on_layer=on_layer),
    ):
        model(example)
    return _Probe(input_layers, relu_of_layer, features)


def _prepared(model: nn.Module, device: torch.device) -> nn.Module:
    model.requires_grad_(False)
    if _prefers_channels_last(model, device):
        converted: nn.Module = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return converted
    return model


class _Path:
    """theta_alpha for every interior alpha, repaired as asked (``settle``).

    Its weights are exactly ``interpolate_states``'s. They are kept as one model per alpha when
    they are large next to one batch's features (an MLP: re-making them every batch would cost
    about as much as running them). Otherwise (a conv net) one work model holds them: for each
    alpha and batch its parameters are re-made in place with ``torch.lerp`` from A's and B's and
    its saved BatchNorm statistics copied in, which costs little next to running it and keeps one
    model in memory instead of one per alpha (VGG-16: 59 MB instead of 650 MB). REPAIR changes
    the weights of every alpha differently, so it always keeps one model per alpha.
    """

    def __init__(
        self,
        arch: Architecture,
        state_a: Mapping[str, torch.Tensor],
        state_b: Mapping[str, torch.Tensor],
        endpoints: tuple[nn.Module, nn.Module],
        alphas: list[float],
        keep_models: bool,
        settle: Callable[[nn.Module, float, Reporter], None],
        device: torch.device,
        reporter: Reporter,
    ) -> None:
        self.models: dict[float, nn.Module] = {}
        self.work: nn.Module | None = None
        self.saved_buffers: dict[float, list[torch.Tensor]] = {}
        self.lerped: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        if not keep_models:
            self.work = _prepared(load_model(arch, state_a, device), device)
            model_a, model_b = endpoints
            # (work, A's, B's) for every parameter; the endpoints' tensors have the state dicts'
            # values in the models' memory layout.
            self.lerped = list(
                zip(self.work.parameters(), model_a.parameters(), model_b.parameters(), strict=True)
            )
            buffers = list(
                zip(self.work.buffers(), model_a.buffers(), model_b.buffers(), strict=True)
            )
        for index, alpha in enumerate(alphas):
            stage = reporter.sub(index / len(alphas), 1 / len(alphas))
            if self.work is None:
                state = interpolate_states(state_a, state_b, alpha)
                self.models[alpha] = _prepared(load_model(arch, state, device), device)
                settle(self.models[alpha], alpha, stage)
            else:
                for work, a, b in [*self.lerped, *buffers]:
                    if work.is_floating_point():
                        torch.lerp(b, a, alpha, out=work)
                    else:
                        work.copy_(a)
                settle(self.work, alpha, stage)
                self.saved_buffers[alpha] = [buffer.clone() for buffer in self.work.buffers()]
            reporter.report((index + 1) / len(alphas), f"built theta_alpha for alpha={alpha:g}")

    def replace_layers(self, names: list[str]) -> dict[float, dict[str, _GivenOutput]]:
        """Put a :class:`_GivenOutput` in place of each named layer of every theta_alpha, unless
        REPAIR changed its weights (``names`` empty)."""
        if self.work is None:
            given = {alpha: {name: _GivenOutput() for name in names} for alpha in self.models}
            for alpha, model in self.models.items():
                for name, module in given[alpha].items():
                    model.set_submodule(name, module)
            return given
        shared = {name: _GivenOutput() for name in names}
        for name, module in shared.items():
            self.work.set_submodule(name, module)
        # The replaced layers' parameters left the work model: stop re-making them.
        remaining = {id(parameter) for parameter in self.work.parameters()}
        self.lerped = [entry for entry in self.lerped if id(entry[0]) in remaining]
        return {alpha: shared for alpha in self.saved_buffers}

    @property
    def modules(self) -> list[nn.Module]:
        """Every distinct model that runs a theta_alpha (to put hooks on)."""
        return list(self.models.values()) if self.work is None else [self.work]

    def model_for(self, alpha: float) -> nn.Module:
        """theta_alpha, ready to run."""
        if self.work is None:
            return self.models[alpha]
        for work, a, b in self.lerped:
            torch.lerp(b, a, alpha, out=work)
        for buffer, saved in zip(self.work.buffers(), self.saved_buffers[alpha], strict=True):
            buffer.copy_(saved)
        return self.work


def _chosen(names: list[str], layers: tuple[str, ...] | None) -> list[str]:
    """``names`` restricted to ``layers`` (all of them when None), in their own order."""
    return names if layers is None else [name for name in names if name in layers]


class _PairPass:
    """The per-batch work: A once, B once compared by hooks, every theta_alpha once."""

    def __init__(
        self,
        model_a: nn.Module,
        model_b: nn.Module,
        path: _Path,
        config: AnalysisConfig,
        probe: _Probe,
        sites: list[str],
        task: Task,
        given_layers: list[str],
    ) -> None:
        self.model_a = model_a
        self.model_b = model_b
        self.path = path
        self.config = config
        self.modules_a = dict(model_a.named_modules())
        # The feature sites measured, the very list the probe saw; Condition I at those that
        # are activations (the others are residual taps).
        self.sites = sites
        self.activations = [name for name in sites if is_activation_module(self.modules_a[name])]
        self.weighted = weighted_layer_names(model_a)
        self.layer_order = [*self.sites, LOGITS]
        # The activation of each Condition I layer, applied to mixed pre-activations; a ReLU's
        # runs in place in scratch memory. Residual taps are the identity: no Condition I.
        self.activation_of = {name: self.modules_a[name] for name in self.activations}
        self.relu_sites = {n for n in self.activations if isinstance(self.modules_a[n], nn.ReLU)}
        self.modules_b = dict(model_b.named_modules())
        self.weight_difference = {
            name: self.modules_a[name].weight - self.modules_b[name].weight
            for name in self.weighted
        }
        self.probe = probe
        self.given = path.replace_layers(given_layers)
        self.task = task
        self.totals = _Totals()
        self.scratch = Scratch()
        self.num_examples = 0
        self.num_predictions = 0
        self.current_alpha = 0.0
        # Per batch: A's tensors until B has been compared with them, then features for LLFC.
        self.pre_a: dict[str, torch.Tensor] = {}
        self.features_a: dict[str, torch.Tensor] = {}
        self.inputs_a: dict[str, torch.Tensor] = {}
        self.outputs_a: dict[str, torch.Tensor] = {}
        self.features_b: dict[str, torch.Tensor] = {}
        self.input_outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hooks(self, stack: ExitStack) -> None:
        """Register every hook of the pass on ``stack``."""
        stack.enter_context(
            watch_features(
                self.model_a,
                relus=self.sites,
                on_relu=self._keep_a_relu,
                layers=self.weighted,
                on_layer=self._keep_a_layer,
            )
        )
        stack.enter_context(
            watch_features(
                self.model_b,
                relus=self.sites,
                on_relu=self._compare_b_relu,
                layers=self.weighted,
                on_layer=self._compare_b_layer,
            )
        )
        for model in self.path.modules:
            stack.enter_context(watch_features(model, relus=self.sites, on_relu=self._llfc_hook))

    def _keep_a_relu(self, name: str, pre_a: torch.Tensor, feature_a: torch.Tensor) -> None:
        # Only h_A: f_A = act(h_A) is remade when B reaches this layer, so a feature map that A
        # pools away does not stay in memory beside its pre-activation.
        self.pre_a[name] = pre_a

    def _keep_a_layer(self, name: str, input_a: torch.Tensor, output_a: torch.Tensor) -> None:
        self.inputs_a[name] = input_a
        if name in self.probe.input_layers:
            self.outputs_a[name] = output_a

    def _dot(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per example <u, v>, as a float32 reduction of the products."""
        return _per_example(torch.mul(u, v, out=self.scratch.like(u, "product")))

    def _lerp(
        self, end: torch.Tensor, start: torch.Tensor, alpha: float, slot: str
    ) -> torch.Tensor:
        """alpha * start + (1 - alpha) * end, exactly ``end`` at 0 and ``start`` at 1."""
        return torch.lerp(end, start, alpha, out=self.scratch.like(end, slot))

    def _activated(self, name: str, pre: torch.Tensor) -> torch.Tensor:
        """The layer's activation of ``pre`` (a new tensor; ``pre`` itself at a residual tap)."""
        if name in self.relu_sites:
            return torch.relu(pre)
        activation = self.activation_of.get(name)
        return pre if activation is None else activation(pre)

    def _compare_b_relu(self, name: str, pre_b: torch.Tensor, feature_b: torch.Tensor) -> None:
        """cos_ab and Condition I at one feature site, from A's kept tensors and B's fresh ones."""
        pre_a = self.pre_a.pop(name)
        self.features_a[name] = self._activated(name, pre_a)
        self.features_b[name] = feature_b
        for rows in _example_chunks(pre_b):
            feature_a, feature_b = self.features_a[name][rows], self.features_b[name][rows]
            self.totals.add(
                ("cos_ab", name),
                _cosine_distance(
                    self._dot(feature_a, feature_b),
                    self._dot(feature_a, feature_a),
                    self._dot(feature_b, feature_b),
                ),
            )
            if name not in self.activation_of:
                continue
            for alpha in self.config.llfc_alphas:
                mix = self._lerp(pre_b[rows], pre_a[rows], alpha, "first")
                act_of_mix = mix.relu_() if name in self.relu_sites else self._activated(name, mix)
                mix_of_act = self._lerp(feature_b, feature_a, alpha, "second")
                norm_u = self._dot(act_of_mix, act_of_mix)
                norm_v = self._dot(mix_of_act, mix_of_act)
                difference = act_of_mix.sub_(mix_of_act)
                self.totals.add(
                    ("weak_additivity", alpha, name),
                    _relative_squared_distance(self._dot(difference, difference), norm_u, norm_v),
                )

    def _same_side(
        self, name: str, input_a: torch.Tensor, output_b: torch.Tensor, rows: slice
    ) -> torch.Tensor:
        """W_A H_A + W_B H_B for ``rows``. W_B H_B is B's output less its bias; W_A H_A is A's kept
        output less its bias where A's forward left it for free (an input layer, or a layer whose
        output is a ReLU's kept input), otherwise recomputed, which costs less than keeping every
        layer output of A for the whole batch."""
        module_a, module_b = self.modules_a[name], self.modules_b[name]
        biases = [module_a.bias, module_b.bias]
        if name in self.outputs_a:
            output_a = self.outputs_a[name][rows]
        elif name in self.probe.relu_of_layer:
            output_a = self.pre_a[self.probe.relu_of_layer[name]][rows]
        else:
            output_a = _apply_layer(module_a, input_a[rows], module_a.weight)
            biases = [module_b.bias]
        output_b = output_b[rows]
        same_side = torch.add(output_a, output_b, out=self.scratch.like(output_b, "first"))
        for bias in biases:
            if isinstance(bias, torch.Tensor):
                same_side.sub_(bias.view(-1, 1, 1) if same_side.dim() == 4 else bias)
        return same_side

    def _squared_norm(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._dot(tensor, tensor).double().sum()

    def _compare_b_layer(self, name: str, input_b: torch.Tensor, output_b: torch.Tensor) -> None:
        """Condition II at one weighted layer, from A's kept tensors and B's fresh ones."""
        input_a = self.inputs_a.pop(name)
        if name in self.outputs_a:
            self.input_outputs[name] = (self.outputs_a[name], output_b)
        for rows in _example_chunks(input_b, output_b):
            same_side = self._same_side(name, input_a, output_b, rows)
            squared_same = self._squared_norm(same_side)
            self.totals.add(("commutativity", name, "same"), squared_same)
            if input_a is input_b:
                # H_A = H_B: the difference (W_A - W_B)(H_A - H_B) is zero.
                self.totals.add(("commutativity", name, "crossed"), squared_same)
                squared_input = self._squared_norm(input_a[rows])
                self.totals.add(("features", name, "a"), squared_input)
                self.totals.add(("features", name, "b"), squared_input)
                continue
            self.totals.add(("features", name, "a"), self._squared_norm(input_a[rows]))
            self.totals.add(("features", name, "b"), self._squared_norm(input_b[rows]))
            input_difference = torch.sub(
                input_a[rows], input_b[rows], out=self.scratch.like(input_a[rows], "second")
            )
            self.totals.add(("features", name, "difference"), self._squared_norm(input_difference))
            difference = _apply_layer(
                self.modules_a[name], input_difference, self.weight_difference[name]
            )
            self.totals.add(("commutativity", name, "difference"), self._squared_norm(difference))
            crossed = same_side.sub_(difference)
            self.totals.add(("commutativity", name, "crossed"), self._squared_norm(crossed))
        self.outputs_a.pop(name, None)

    def _llfc_hook(self, name: str, pre: torch.Tensor, feature: torch.Tensor) -> None:
        if self.current_alpha in self.config.llfc_alphas:
            self._llfc(self.current_alpha, name, feature)

    def _llfc(self, alpha: float, name: str, feature: torch.Tensor) -> None:
        """LLFC of theta_alpha at one layer: its feature against alpha f_A + (1 - alpha) f_B."""
        feature_a = self.features_a[name] if name != LOGITS else self.logits_a
        feature_b = self.features_b[name] if name != LOGITS else self.logits_b
        for rows in _example_chunks(feature):
            target = self._lerp(feature_b[rows], feature_a[rows], alpha, "first")
            dot = self._dot(feature[rows], target)
            norm = self._dot(feature[rows], feature[rows])
            self.totals.add(
                ("cos_alpha", alpha, name), _cosine_distance(dot, norm, self._dot(target, target))
            )
            self.totals.add(("scale_dot", alpha, name), dot)
            self.totals.add(("scale_norm", alpha, name), norm)

    def _lmc(self, key: Any, logits: torch.Tensor, labels: torch.Tensor) -> None:
        loss, errors = self.task.summed(logits, labels)
        self.totals.add(("loss", key), loss)
        self.totals.add(("errors", key), errors)

    def batch(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Measure one batch; only running sums remain afterwards."""
        self.num_examples += inputs.shape[0]
        self.num_predictions += self.task.predictions(labels)
        self.logits_a = self.model_a(inputs)
        self.logits_b = self.model_b(inputs)
        self._lmc("a", self.logits_a, labels)
        self._lmc("b", self.logits_b, labels)
        self.totals.add(
            ("cos_ab", LOGITS),
            _cosine_distance(
                self._dot(self.logits_a, self.logits_b),
                self._dot(self.logits_a, self.logits_a),
                self._dot(self.logits_b, self.logits_b),
            ),
        )
        for alpha, features, logits in (
            (1.0, self.features_a, self.logits_a),
            (0.0, self.features_b, self.logits_b),
        ):
            if alpha in self.config.alphas:
                self._lmc(alpha, logits, labels)
            if alpha in self.config.llfc_alphas:
                for name in self.sites:
                    self._llfc(alpha, name, features[name])
                self._llfc(alpha, LOGITS, logits)

        for alpha, given in self.given.items():
            for name, layer in given.items():
                output_a, output_b = self.input_outputs[name]
                # "second" is free while theta_alpha runs: its hooks use "first" and "product".
                layer.output = self._lerp(output_b, output_a, alpha, "second")
            self.current_alpha = alpha
            logits = self.path.model_for(alpha)(inputs)
            for layer in given.values():
                layer.output = None
            if alpha in self.config.alphas:
                self._lmc(alpha, logits, labels)
            if alpha in self.config.llfc_alphas:
                self._llfc(alpha, LOGITS, logits)

        for kept in (self.pre_a, self.features_a, self.inputs_a, self.outputs_a):
            kept.clear()
        self.features_b.clear()
        self.input_outputs.clear()
        del self.logits_a, self.logits_b


def keeps_model_per_alpha(
    interior_alphas: int, parameters: int, batch_features: int, repair: str
) -> bool:
    """Whether the path keeps one model per interior alpha rather than one work model re-made
    for every alpha (see :class:`_Path`): always under REPAIR, which changes every alpha's
    weights differently, else when the ``parameters`` outweigh one batch's feature-site
    outputs (``batch_features``)."""
    return interior_alphas == 0 or repair == "repair" or parameters > batch_features


def measure_pair(
    arch: Architecture,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    dataset: Dataset,
    config: AnalysisConfig,
    *,
    bn_data: Dataset,
    device: torch.device,
    reporter: Reporter,
    per_model: PerModel | None = None,
) -> tuple[PairResult, dict[str, LossError]]:
    """The pair's measurements (lmc, llfc, conditions, lemma) and the endpoints' loss/error.

    Every theta_alpha is repaired by the first of ``config.repair_modes`` on ``bn_data``
    (:class:`llfc_core.repair.PathRepair`). ``dataset`` and ``bn_data`` must already be shaped
    for the arch. Under 'reset' A and B are re-estimated like every other point of the path, so
    A compared with itself gives a flat path and zero barrier, and the barrier measures the
    interpolation alone. ``per_model`` keeps the built endpoints of its shared state dicts for
    the next pair they are in (the pass reads them and changes nothing in them).
    """
    per_model = per_model or PerModel()
    mode = config.repair_modes(arch.has_batch_norm)[0]
    repaired = mode == "repair" or (mode == "reset" and arch.has_batch_norm)
    build_share = 0.3 if repaired else 0.05
    build_reporter = reporter.sub(0.0, build_share)
    interior = [alpha for alpha in config.all_alphas if 0.0 < alpha < 1.0]
    stages = 3 + len(interior)

    def built(state: Mapping[str, torch.Tensor], stage_reporter: Reporter) -> nn.Module:
        return settle_endpoint(
            _prepared(load_model(arch, state, device), device),
            arch,
            mode,
            bn_data,
            batch_size=config.batch_size,
            device=device,
            reporter=stage_reporter,
        )

    endpoints = []
    for index, (label, state) in enumerate((("A", state_a), ("B", state_b))):
        stage_reporter = build_reporter.sub(index / stages, 1 / stages)
        endpoints.append(per_model.get("endpoint", state, partial(built, state, stage_reporter)))
        build_reporter.report((index + 1) / stages, f"built {label}")
    model_a, model_b = endpoints
    path_repair = PathRepair(
        mode,
        model_a,
        model_b,
        bn_data,
        batch_size=config.batch_size,
        device=device,
        reporter=build_reporter.sub(2 / stages, 1 / stages),
    )
    # One list for the probe and the pass: a layer's output is reused as a site's kept
    # pre-activation only where that site is measured.
    sites = _chosen(feature_site_names(model_a), config.layers)
    weighted = weighted_layer_names(model_a)
    probe = _probe(model_a, next(iter(dataset.batches(1)))[0].to(device), sites, weighted)
    parameters = sum(parameter.numel() for parameter in model_a.parameters())
    path = _Path(
        arch,
        state_a,
        state_b,
        (model_a, model_b),
        interior,
        keep_models=keeps_model_per_alpha(
            len(interior), parameters, config.batch_size * probe.features_per_example, mode
        ),
        settle=path_repair.settle,
        device=device,
        reporter=build_reporter.sub(3 / stages, len(interior) / stages),
    )
    # theta_alpha's input layer is the mix of A's and B's outputs unless REPAIR rescaled it.
    given_layers = [] if mode == "repair" else probe.input_layers
    pair_pass = _PairPass(model_a, model_b, path, config, probe, sites, arch.task, given_layers)
    channels_last = _prefers_channels_last(model_a, device)
    pass_reporter = reporter.sub(build_share, 1.0 - build_share)
    total_batches = dataset.num_batches(config.batch_size)

    with ExitStack() as hooks, torch.inference_mode():
        pair_pass.hooks(hooks)
        for batch_index, (inputs, labels) in enumerate(dataset.batches(config.batch_size)):
            inputs = inputs.to(device)
            if channels_last and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            pair_pass.batch(inputs, labels.to(device))
            pass_reporter.report(
                (batch_index + 1) / total_batches,
                f"measuring LMC, LLFC and conditions: batch {batch_index + 1} of {total_batches}",
            )

    weight_distance = [
        relative_squared_distance_from_sums(
            float((state_a[f"{n}.weight"] - state_b[f"{n}.weight"]).double().pow(2).sum()),
            float(state_a[f"{n}.weight"].double().pow(2).sum()),
            float(state_b[f"{n}.weight"].double().pow(2).sum()),
        )
        for n in weighted
    ]
    return _summarise(pair_pass, config, weight_distance)


def barrier(values: list[float], alphas: tuple[float, ...], at_a: float, at_b: float) -> float:
    """max over alpha of value(alpha) - (alpha value(A) + (1 - alpha) value(B)).

    The line is computed from its nearer end, value(B) + alpha (value(A) - value(B)) below
    alpha 0.5 and value(A) - (1 - alpha) (value(A) - value(B)) above: exact at both ends however
    far apart they are (a diverged endpoint's 1e34 beside a 1.4 does not swallow the 1.4), and
    exactly the endpoints' value when they agree, so a model with itself (a sweep's diagonal)
    has a barrier of exactly 0, where alpha a + (1 - alpha) a rounds to a neighbour of a for
    about one a in four.
    """
    difference = at_a - at_b
    line = [
        at_b + alpha * difference if alpha < 0.5 else at_a - (1 - alpha) * difference
        for alpha in alphas
    ]
    return max(v - on_line for v, on_line in zip(values, line, strict=True))


def _summarise(
    pair_pass: _PairPass, config: AnalysisConfig, weight_distance: list[float]
) -> tuple[PairResult, dict[str, LossError]]:
    totals = pair_pass.totals
    layer_order = pair_pass.layer_order
    weighted = pair_pass.weighted
    n = max(pair_pass.num_examples, 1)
    predictions = max(pair_pass.num_predictions, 1)
    loss_at = {side: totals.get("loss", side) / predictions for side in ("a", "b")}
    error_at = {side: totals.get("errors", side) / predictions for side in ("a", "b")}
    loss = [totals.get("loss", alpha) / predictions for alpha in config.alphas]
    error = [totals.get("errors", alpha) / predictions for alpha in config.alphas]
    activation_layers = pair_pass.activations
    epsilon = max(error_at["a"], error_at["b"])
    max_error = max(error)

    def scale(alpha: float, name: str) -> float | None:
        norm = totals.get("scale_norm", alpha, name)
        return totals.get("scale_dot", alpha, name) / norm if norm > 0 else None

    pair = PairResult(
        lmc=Lmc(
            alphas=list(config.alphas),
            loss=loss,
            error=error,
            loss_barrier=barrier(loss, config.alphas, loss_at["a"], loss_at["b"]),
            error_barrier=barrier(error, config.alphas, error_at["a"], error_at["b"]),
        ),
        llfc=Llfc(
            layers=layer_order,
            cos_ab=[totals.get("cos_ab", name) / n for name in layer_order],
            cos_alpha={
                alpha_key(alpha): [totals.get("cos_alpha", alpha, name) / n for name in layer_order]
                for alpha in config.llfc_alphas
            },
            scale_c={
                alpha_key(alpha): [scale(alpha, name) for name in layer_order]
                for alpha in config.llfc_alphas
            },
        ),
        weak_additivity={
            alpha_key(alpha): [
                totals.get("weak_additivity", alpha, name) / n for name in activation_layers
            ]
            for alpha in config.llfc_alphas
        },
        weak_additivity_layers=activation_layers,
        commutativity=[
            relative_squared_distance_from_sums(
                totals.get("commutativity", name, "difference"),
                totals.get("commutativity", name, "same"),
                totals.get("commutativity", name, "crossed"),
            )
            for name in weighted
        ],
        commutativity_layers=weighted,
        commutativity_factors={
            "weights": weight_distance,
            "features": [
                relative_squared_distance_from_sums(
                    totals.get("features", name, "difference"),
                    totals.get("features", name, "a"),
                    totals.get("features", name, "b"),
                )
                for name in weighted
            ],
        },
        lemma=Lemma(
            epsilon=epsilon,
            max_error_on_path=max_error,
            holds=max_error <= 2 * epsilon + 1e-12,
        ),
    )
    endpoints = {side: LossError(loss=loss_at[side], error=error_at[side]) for side in ("a", "b")}
    return pair, endpoints
