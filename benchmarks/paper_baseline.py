"""The analysis computed the way the paper's released code computes it: the benchmarks' baseline.

The LLFC paper's scripts (one per experiment: LMC, LLFC, weak additivity) each build one model at
a time from interpolated weights, run it over the whole data with hooks that append every
feature of every example to a list, concatenate those lists, and compute distances over the full
matrices after converting them to float64. This module does the same, experiment by
experiment, and returns the same numbers as :func:`llfc_core.analysis.analyze_pair`'s naive
pair, so a benchmark can check that the two agree before it compares their cost:

- LMC: for every alpha, theta_alpha is built (its BatchNorm statistics re-estimated, as the engine
  does) and its logits for all examples are kept; loss and error in float64.
- LLFC: for every LLFC alpha, the features of A, B and theta_alpha for all examples (A's and B's
  recomputed per alpha, as one script run per alpha does); cosine distances in float64.
- Condition I: the ReLU inputs of A and B for all examples; distances in float64.
- Condition II: the inputs H of every Linear/Conv2d of A and B for all examples; the four
  products W_A H_A, W_B H_B, W_A H_B, W_B H_A over the whole data matrix; distances in float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llfc_core.analysis import AnalysisConfig
from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset
from llfc_core.features import feature_site_names, weighted_layer_names
from llfc_core.interpolation import interpolate_states, reset_batch_norm
from llfc_core.metrics import cosine_distance, relative_squared_distance
from llfc_core.models import load_model

LOGITS = "logits"


def _model(
    arch: Architecture,
    state: Mapping[str, torch.Tensor],
    data: Dataset,
    batch_size: int,
    device: torch.device,
) -> nn.Module:
    model = load_model(arch, state, device)
    if arch.has_batch_norm:
        reset_batch_norm(model, data, batch_size=batch_size, device=device)
    return model


def _all_features(
    model: nn.Module,
    data: Dataset,
    batch_size: int,
    device: torch.device,
    names: list[str],
    *,
    inputs: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every example's output (or input) of the named modules, concatenated, and the logits."""
    modules = dict(model.named_modules())
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    handles = []
    for name in names:
        if isinstance(modules[name], nn.ReLU):
            modules[name].inplace = False  # type: ignore[assignment]

        def hook(module: nn.Module, args: Any, output: torch.Tensor, name: str = name) -> None:
            kept[name].append((args[0] if inputs else output).detach().cpu())

        handles.append(modules[name].register_forward_hook(hook))
    logits = []
    with torch.no_grad():
        for x, _ in data.batches(batch_size):
            logits.append(model(x.to(device)).cpu())
    for handle in handles:
        handle.remove()
    return {name: torch.cat(parts) for name, parts in kept.items()}, torch.cat(logits)


def _apply_layer(module: nn.Module, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Conv2d):
        return F.conv2d(
            inputs, weight, None, module.stride, module.padding, module.dilation, module.groups
        )
    return F.linear(inputs, weight)


def _relative(u: torch.Tensor, v: torch.Tensor) -> float:
    """d_rel of two whole matrices, in float64."""
    u, v = u.double(), v.double()
    denominator = 0.5 * (u.pow(2).sum() + v.pow(2).sum())
    return float((u - v).pow(2).sum() / denominator) if denominator > 0 else 0.0


def baseline_measure_pair(
    arch: Architecture,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    data: Dataset,
    config: AnalysisConfig,
    device: torch.device,
) -> dict[str, Any]:
    """The naive pair's LMC curve, LLFC, Conditions I and II, in the engine's JSON layout."""
    batch_size = config.batch_size
    labels = torch.cat([y for _, y in data.batches(batch_size)])

    losses, errors = [], []
    for alpha in config.alphas:
        model = _model(arch, interpolate_states(state_a, state_b, alpha), data, batch_size, device)
        _, logits = _all_features(model, data, batch_size, device, [])
        losses.append(float(F.cross_entropy(logits.double(), labels)))
        errors.append(float((logits.argmax(1) != labels).double().mean()))
        del model, logits

    model_a = _model(arch, state_a, data, batch_size, device)
    model_b = _model(arch, state_b, data, batch_size, device)
    relus = feature_site_names(model_a)
    layers = [*relus, LOGITS]
    cos_ab: list[float] = []
    cos_alpha: dict[str, list[float]] = {}
    scale_c: dict[str, list[float | None]] = {}
    for alpha in config.llfc_alphas:
        model_alpha = _model(
            arch, interpolate_states(state_a, state_b, alpha), data, batch_size, device
        )
        features = {}
        for side, model in (("a", model_a), ("b", model_b), ("alpha", model_alpha)):
            kept, logits = _all_features(model, data, batch_size, device, relus)
            kept[LOGITS] = logits
            features[side] = kept
        cos_ab = []
        key = f"{alpha:g}"
        cos_alpha[key], scale_c[key] = [], []
        for name in layers:
            f_a = features["a"][name].flatten(1).double()
            f_b = features["b"][name].flatten(1).double()
            f_alpha = features["alpha"][name].flatten(1).double()
            target = alpha * f_a + (1 - alpha) * f_b
            cos_ab.append(float(cosine_distance(f_a, f_b).mean()))
            cos_alpha[key].append(float(cosine_distance(f_alpha, target).mean()))
            norm = f_alpha.pow(2).sum()
            scale_c[key].append(float((f_alpha * target).sum() / norm) if norm > 0 else None)
            del f_a, f_b, f_alpha, target
        del features, model_alpha

    pre_a, _ = _all_features(model_a, data, batch_size, device, relus, inputs=True)
    pre_b, _ = _all_features(model_b, data, batch_size, device, relus, inputs=True)
    weak_additivity: dict[str, list[float]] = {}
    for alpha in config.llfc_alphas:
        values = []
        for name in relus:
            h_a = pre_a[name].flatten(1).double()
            h_b = pre_b[name].flatten(1).double()
            relu_of_mix = torch.relu(alpha * h_a + (1 - alpha) * h_b)
            mix_of_relu = alpha * torch.relu(h_a) + (1 - alpha) * torch.relu(h_b)
            values.append(float(relative_squared_distance(relu_of_mix, mix_of_relu).mean()))
        weak_additivity[f"{alpha:g}"] = values
    del pre_a, pre_b

    weighted = weighted_layer_names(model_a)
    inputs_a, _ = _all_features(model_a, data, batch_size, device, weighted, inputs=True)
    inputs_b, _ = _all_features(model_b, data, batch_size, device, weighted, inputs=True)
    modules_a = dict(model_a.named_modules())
    modules_b = dict(model_b.named_modules())
    commutativity, feature_distance = [], []
    with torch.no_grad():
        for name in weighted:
            module = modules_a[name]
            w_a, w_b = module.weight.cpu(), modules_b[name].weight.cpu()
            h_a, h_b = inputs_a.pop(name), inputs_b.pop(name)
            same = _apply_layer(module, h_a, w_a) + _apply_layer(module, h_b, w_b)
            crossed = _apply_layer(module, h_b, w_a) + _apply_layer(module, h_a, w_b)
            commutativity.append(_relative(same, crossed))
            feature_distance.append(_relative(h_a, h_b))
            del same, crossed, h_a, h_b

    return {
        "lmc": {"loss": losses, "error": errors},
        "llfc": {"layers": layers, "cos_ab": cos_ab, "cos_alpha": cos_alpha, "scale_c": scale_c},
        "weak_additivity": weak_additivity,
        "commutativity": commutativity,
        "commutativity_factors": {"features": feature_distance},
    }


def max_difference(ours: Any, baseline: Any) -> float:
    """The largest absolute difference between matching numbers of two nested results."""
    if isinstance(baseline, dict):
        return max((max_difference(ours[key], value) for key, value in baseline.items()), default=0)
    if isinstance(baseline, list):
        return max((max_difference(o, b) for o, b in zip(ours, baseline, strict=True)), default=0)
    if isinstance(baseline, int | float) and not isinstance(baseline, bool):
        return abs(float(ours) - float(baseline))
    return 0.0
