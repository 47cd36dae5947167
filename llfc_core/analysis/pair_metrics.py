"""One streaming pass over the data that measures everything about a pair (A, B).

Per batch, A and B run once with hooks on every ReLU (input = pre-activation h, output = feature
f) and on the input H of every Linear/Conv2d; each theta_alpha runs once. From those tensors:

- LMC: loss and error of theta_alpha for every alpha in ``config.alphas``.
- LLFC, per layer l (each ReLU output, then the logits) and alpha in ``config.llfc_alphas``:
  E_x[d_cos(f_l(theta_alpha; x), alpha f_l(A; x) + (1 - alpha) f_l(B; x))], the baseline
  E_x[d_cos(f_l(A; x), f_l(B; x))], and c = sum <f_alpha, target> / sum ||f_alpha||^2.
- Condition I, per ReLU layer and alpha: E_x[d_rel(relu(alpha h_A + (1 - alpha) h_B),
  alpha relu(h_A) + (1 - alpha) relu(h_B))].
- Condition II, per weighted layer: d_rel(W_A H_A + W_B H_B, W_A H_B + W_B H_A) over the data
  matrix, whose difference is (W_A - W_B)(H_A - H_B) (the poster's Eq. 2), beside the factors
  d_rel(W_A, W_B) and d_rel(H_A, H_B).

Only sums are kept between batches, so memory depends on the batch size and the model, never on
the number of examples. Distances are defined in :mod:`llfc_core.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llfc_core.analysis.config import AnalysisConfig, alpha_key
from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset
from llfc_core.features import capture_features, relu_names, weighted_layer_names
from llfc_core.interpolation import batch_norm_modules, interpolate_states, reset_batch_norm
from llfc_core.metrics import (
    cosine_distance,
    relative_squared_distance,
    relative_squared_distance_from_sums,
)
from llfc_core.models import load_model
from llfc_core.progress import Reporter

LOGITS = "logits"


def _apply_layer(module: nn.Module, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's linear map with ``weight`` in place of its own (bias left out: it cancels)."""
    if isinstance(module, nn.Conv2d):
        return F.conv2d(
            inputs, weight, None, module.stride, module.padding, module.dilation, module.groups
        )
    return F.linear(inputs, weight)


@dataclass
class _PairSums:
    """Running sums over examples; turned into means once the pass is over."""

    num_examples: int = 0
    loss: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    endpoint_loss: dict[str, float] = field(default_factory=lambda: {"a": 0.0, "b": 0.0})
    endpoint_errors: dict[str, float] = field(default_factory=lambda: {"a": 0.0, "b": 0.0})
    cos_ab: dict[str, float] = field(default_factory=dict)
    cos_alpha: dict[float, dict[str, float]] = field(default_factory=dict)
    scale_dot: dict[float, dict[str, float]] = field(default_factory=dict)
    scale_norm: dict[float, dict[str, float]] = field(default_factory=dict)
    weak_additivity: dict[float, dict[str, float]] = field(default_factory=dict)
    commutativity: dict[str, list[float]] = field(default_factory=dict)
    feature_distance: dict[str, list[float]] = field(default_factory=dict)


def _add(table: dict[str, float], key: str, value: torch.Tensor | float) -> None:
    table[key] = table.get(key, 0.0) + float(value)


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.flatten(1).double()


def _build_models(
    arch: Architecture,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    alphas: tuple[float, ...],
    reset_bn: bool,
    bn_data: Dataset,
    batch_size: int,
    device: torch.device,
    reporter: Reporter,
) -> tuple[nn.Module, nn.Module, dict[float, nn.Module]]:
    """A, B and every theta_alpha as models, their BatchNorm statistics re-estimated if asked.

    The endpoints are re-estimated like every other point of the path, so A compared with itself
    gives a flat path and zero barrier, and the barrier measures the interpolation alone.
    """
    sources: list[tuple[str, Callable[[], Mapping[str, torch.Tensor]]]] = [
        ("A", lambda: state_a),
        ("B", lambda: state_b),
    ]
    sources += [
        (f"theta_alpha for alpha={alpha:g}", partial(interpolate_states, state_a, state_b, alpha))
        for alpha in alphas
    ]
    models: list[nn.Module] = []
    for index, (label, make_state) in enumerate(sources):
        model = load_model(arch, make_state(), device)
        if reset_bn and batch_norm_modules(model):
            reset_batch_norm(
                model,
                bn_data,
                batch_size=batch_size,
                device=device,
                reporter=reporter.sub(index / len(sources), 1 / len(sources)),
            )
        reporter.report((index + 1) / len(sources), f"built {label}")
        models.append(model)
    model_a, model_b, *alpha_models = models
    return model_a, model_b, dict(zip(alphas, alpha_models, strict=True))


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
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The PAIR object of the API (lmc, llfc, conditions, lemma) and the endpoints' loss/error.

    ``dataset`` and ``bn_data`` must already be shaped for the arch.
    """
    reset_bn = arch.has_batch_norm if config.reset_bn is None else config.reset_bn
    build_share = 0.3 if reset_bn and arch.has_batch_norm else 0.05
    model_a, model_b, alpha_models = _build_models(
        arch,
        state_a,
        state_b,
        config.all_alphas,
        reset_bn,
        bn_data,
        config.batch_size,
        device,
        reporter.sub(0.0, build_share),
    )
    relus = relu_names(model_a)
    weighted = weighted_layer_names(model_a)
    modules_a = dict(model_a.named_modules())
    modules_b = dict(model_b.named_modules())
    sums = _PairSums()
    pass_reporter = reporter.sub(build_share, 1.0 - build_share)
    total_batches = dataset.num_batches(config.batch_size)
    layer_order: list[str] = []

    with ExitStack() as hooks, torch.inference_mode():
        seen_a = hooks.enter_context(
            capture_features(model_a, relus=relus, pre_activations=True, layer_inputs=weighted)
        )
        seen_b = hooks.enter_context(
            capture_features(model_b, relus=relus, pre_activations=True, layer_inputs=weighted)
        )
        seen_alpha = {
            alpha: hooks.enter_context(capture_features(alpha_models[alpha], relus=relus))
            for alpha in config.llfc_alphas
        }
        for batch_index, (inputs, labels) in enumerate(dataset.batches(config.batch_size)):
            inputs = inputs.to(device)
            labels = labels.to(device)
            sums.num_examples += inputs.shape[0]
            logits_a = model_a(inputs)
            logits_b = model_b(inputs)
            layer_order = [*seen_a.activations, LOGITS]
            features_a = {name: _flat(t) for name, t in seen_a.activations.items()}
            features_b = {name: _flat(t) for name, t in seen_b.activations.items()}
            features_a[LOGITS] = logits_a.double()
            features_b[LOGITS] = logits_b.double()

            for side, logits in (("a", logits_a), ("b", logits_b)):
                sums.endpoint_loss[side] += float(
                    F.cross_entropy(logits.float(), labels, reduction="sum")
                )
                sums.endpoint_errors[side] += float((logits.argmax(1) != labels).sum())
            for name in layer_order:
                _add(sums.cos_ab, name, cosine_distance(features_a[name], features_b[name]).sum())

            for alpha, model in alpha_models.items():
                logits_alpha = model(inputs)
                if alpha in config.alphas:
                    _add(
                        sums.loss,
                        str(alpha),
                        F.cross_entropy(logits_alpha.float(), labels, reduction="sum"),
                    )
                    _add(sums.errors, str(alpha), (logits_alpha.argmax(1) != labels).sum())
                if alpha in seen_alpha:
                    features_alpha = {n: _flat(t) for n, t in seen_alpha[alpha].activations.items()}
                    features_alpha[LOGITS] = logits_alpha.double()
                    seen_alpha[alpha].clear()
                    cos_table = sums.cos_alpha.setdefault(alpha, {})
                    dot_table = sums.scale_dot.setdefault(alpha, {})
                    norm_table = sums.scale_norm.setdefault(alpha, {})
                    for name in layer_order:
                        target = alpha * features_a[name] + (1 - alpha) * features_b[name]
                        mixed = features_alpha[name]
                        _add(cos_table, name, cosine_distance(mixed, target).sum())
                        _add(dot_table, name, (mixed * target).sum())
                        _add(norm_table, name, mixed.pow(2).sum())

            for alpha in config.llfc_alphas:
                table = sums.weak_additivity.setdefault(alpha, {})
                for name, pre_a in seen_a.pre_activations.items():
                    h_a = _flat(pre_a)
                    h_b = _flat(seen_b.pre_activations[name])
                    relu_of_mix = torch.relu(alpha * h_a + (1 - alpha) * h_b)
                    mix_of_relu = alpha * torch.relu(h_a) + (1 - alpha) * torch.relu(h_b)
                    _add(table, name, relative_squared_distance(relu_of_mix, mix_of_relu).sum())

            for name in weighted:
                h_a = seen_a.layer_inputs[name]
                h_b = seen_b.layer_inputs[name]
                w_a = modules_a[name].weight.detach()
                w_b = modules_b[name].weight.detach()
                same_side = _apply_layer(modules_a[name], h_a, w_a) + _apply_layer(
                    modules_a[name], h_b, w_b
                )
                difference = _apply_layer(modules_a[name], h_a - h_b, w_a - w_b)
                crossed = same_side - difference
                totals = sums.commutativity.setdefault(name, [0.0, 0.0, 0.0])
                totals[0] += float(difference.double().pow(2).sum())
                totals[1] += float(same_side.double().pow(2).sum())
                totals[2] += float(crossed.double().pow(2).sum())
                feature_totals = sums.feature_distance.setdefault(name, [0.0, 0.0, 0.0])
                feature_totals[0] += float((h_a - h_b).double().pow(2).sum())
                feature_totals[1] += float(h_a.double().pow(2).sum())
                feature_totals[2] += float(h_b.double().pow(2).sum())

            seen_a.clear()
            seen_b.clear()
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
    return _summarise(sums, config, layer_order, weighted, weight_distance)


def _barrier(values: list[float], alphas: tuple[float, ...], at_a: float, at_b: float) -> float:
    return max(v - (a * at_a + (1 - a) * at_b) for v, a in zip(values, alphas, strict=True))


def _summarise(
    sums: _PairSums,
    config: AnalysisConfig,
    layer_order: list[str],
    weighted: list[str],
    weight_distance: list[float],
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    n = max(sums.num_examples, 1)
    endpoints = {
        side: {"loss": sums.endpoint_loss[side] / n, "error": sums.endpoint_errors[side] / n}
        for side in ("a", "b")
    }
    loss = [sums.loss[str(alpha)] / n for alpha in config.alphas]
    error = [sums.errors[str(alpha)] / n for alpha in config.alphas]
    relu_layers = layer_order[:-1]
    epsilon = max(endpoints["a"]["error"], endpoints["b"]["error"])
    max_error = max(error)
    pair = {
        "lmc": {
            "alphas": list(config.alphas),
            "loss": loss,
            "error": error,
            "loss_barrier": _barrier(
                loss, config.alphas, endpoints["a"]["loss"], endpoints["b"]["loss"]
            ),
            "error_barrier": _barrier(
                error, config.alphas, endpoints["a"]["error"], endpoints["b"]["error"]
            ),
        },
        "llfc": {
            "layers": layer_order,
            "cos_ab": [sums.cos_ab[name] / n for name in layer_order],
            "cos_alpha": {
                alpha_key(alpha): [sums.cos_alpha[alpha][name] / n for name in layer_order]
                for alpha in config.llfc_alphas
            },
            "scale_c": {
                alpha_key(alpha): [
                    sums.scale_dot[alpha][name] / sums.scale_norm[alpha][name]
                    if sums.scale_norm[alpha][name] > 0
                    else None
                    for name in layer_order
                ]
                for alpha in config.llfc_alphas
            },
        },
        "weak_additivity": {
            alpha_key(alpha): [sums.weak_additivity[alpha][name] / n for name in relu_layers]
            for alpha in config.llfc_alphas
        },
        "weak_additivity_layers": relu_layers,
        "commutativity": [
            relative_squared_distance_from_sums(*sums.commutativity[name]) for name in weighted
        ],
        "commutativity_layers": weighted,
        "commutativity_factors": {
            "weights": weight_distance,
            "features": [
                relative_squared_distance_from_sums(*sums.feature_distance[name])
                for name in weighted
            ],
        },
        "lemma": {
            "epsilon": epsilon,
            "max_error_on_path": max_error,
            "holds": max_error <= 2 * epsilon + 1e-12,
        },
    }
    return pair, endpoints
