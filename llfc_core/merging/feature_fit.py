"""Feature averaging: a merged model whose every layer's features approximate the average of the
inputs' features, fitted layer by layer by least squares (the poster's "feature averaging").

The inputs are already in one basis (MergeMany's permutations), and the merged model starts at
their (repaired) weight average. The weighted layers are visited in forward order; for layer l,
on the fitting data, X holds the merged model's *current* inputs to the layer as rows (a conv's
unfolded patches, :mod:`llfc_core.merging.layer_maps`) and T the mean of the inputs' pre-
activations of that layer. Its weight (and intercept) solves

    min_W ||X W^T - T||_F^2 + lambda ||W - W_0||_F^2,
    W = (T^T X + lambda W_0) (X^T X + lambda I)^-1,

with W_0 the layer's weights at the start, ``lambda = ridge * tr(X^T X) / d`` (``ridge`` relative
to the mean squared input, so its effect does not depend on the data's scale or size). The ridge
keeps the normal equations solvable where the data leave directions unexcited (a digit pixel that
is always 0, a dead unit of the previous layer) and leaves W_0 there rather than an arbitrary
solution; when the inputs are one model, W_0 already gives T exactly and is the solution for every
lambda. X^T X and T^T X are summed over batches in float64, so memory depends on the layer's
width, not on the number of examples. Layer l + 1 is then fitted on the inputs the fitted layer l
produces, so each fit corrects what the fits before it left.

BatchNorm: a layer read by a BatchNorm is fitted *through* it. The merged model's statistics are
those the repair step gave the weight average, and stay fixed; the BatchNorm is then the
per-channel map ``s z + t``, so the layer's output z is fitted to ``(T - t) / s``, T being the
mean of the inputs' BatchNorm outputs. A layer without a bias puts its intercept c into the
BatchNorm (running mean - c), the only place the architecture has for it. Re-estimating the
statistics afterwards would undo the fit, so the result is not repaired again. Channels whose
``s`` is 0 carry no feature and keep W_0.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress

import torch
from torch import nn

from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset, fit_to_arch
from llfc_core.features import watch_features
from llfc_core.merging.layer_maps import ChannelAffine, LayerMap, Site, fitting_sites, layer_map
from llfc_core.models import load_model
from llfc_core.permutation import StateDict
from llfc_core.progress import Reporter

DEFAULT_RIDGE = 1e-3
"""lambda relative to the mean diagonal of X^T X: small enough that the data decide every
direction they excite, large enough to pin the others to the weight average."""


class _Reached(Exception):
    """Stops a forward pass once the tensor wanted is in hand: the layers after it are not
    needed."""


def _tensor_at(
    model: nn.Module, name: str, inputs: torch.Tensor, *, read_input: bool
) -> torch.Tensor:
    """The input (``read_input``) or the output of module ``name`` on ``inputs``."""
    found: list[torch.Tensor] = []

    def grab(_: str, module_input: torch.Tensor, output: torch.Tensor) -> None:
        found.append(module_input if read_input else output)
        raise _Reached

    with watch_features(model, layers=[name], on_layer=grab), suppress(_Reached):
        model(inputs)
    return found[0]


def _mean_pre_activation(
    models: Sequence[nn.Module], site: Site, inputs: torch.Tensor
) -> torch.Tensor:
    outputs = [_tensor_at(model, site.pre_activation, inputs, read_input=False) for model in models]
    return torch.stack(outputs).mean(0)


@torch.inference_mode()
def _fit_site(
    merged: nn.Module,
    models: Sequence[nn.Module],
    site: Site,
    data: Dataset,
    *,
    ridge: float,
    batch_size: int,
    device: torch.device,
    reporter: Reporter,
) -> None:
    modules = dict(merged.named_modules())
    found = layer_map(modules[site.layer])
    assert isinstance(found, LayerMap)  # fitting_sites kept only the layers it can map
    norm = modules[site.norm] if site.norm is not None else None
    affine = ChannelAffine.of(norm) if isinstance(norm, nn.modules.batchnorm._BatchNorm) else None
    with_intercept = found.bias is not None or affine is not None
    start = found.weight_matrix().double()
    if with_intercept:
        intercept = found.bias if found.bias is not None else torch.zeros(start.shape[0])
        start = torch.cat([start, intercept.to(start).unsqueeze(1)], dim=1)
    gram = torch.zeros(start.shape[1], start.shape[1], dtype=torch.float64, device=device)
    cross = torch.zeros_like(start)
    live = affine.scale != 0 if affine is not None else None
    total = data.num_batches(batch_size)
    for index, (batch, _) in enumerate(data.batches(batch_size)):
        batch = batch.to(device)
        rows = found.input_rows(_tensor_at(merged, site.layer, batch, read_input=True)).double()
        targets = found.output_rows(_mean_pre_activation(models, site, batch)).double()
        if affine is not None and live is not None:
            # Where s = 0 the target is irrelevant: those rows keep W_0 below.
            targets = (targets - affine.shift) / torch.where(live, affine.scale, 1.0)
        if with_intercept:
            rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
        gram += rows.T @ rows
        cross += targets.T @ rows
        reporter.report((index + 1) / total, f"fitting {site.layer} to the average features")
    size = gram.shape[0]
    strength = ridge * float(gram.diagonal().sum()) / size or ridge
    regularised = gram + strength * torch.eye(size, dtype=gram.dtype, device=device)
    solution = torch.linalg.solve(regularised, (cross + strength * start).T).T
    if live is not None:
        solution[~live] = start[~live]
    weight = solution[:, : found.weight_matrix().shape[1]]
    found.set_weight_matrix(weight.to(found.weight_matrix().dtype))
    if not with_intercept:
        return
    fitted_intercept = solution[:, -1]
    if found.bias is not None:
        found.bias.copy_(fitted_intercept)
    elif isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_mean is not None:
        norm.running_mean.sub_(fitted_intercept.to(norm.running_mean))


def fit_feature_average(
    arch: Architecture,
    start: StateDict,
    inputs: Sequence[StateDict],
    data: Dataset,
    *,
    ridge: float = DEFAULT_RIDGE,
    batch_size: int,
    device: torch.device,
    reporter: Reporter,
) -> tuple[StateDict, list[str], dict[str, str]]:
    """The merged state fitted from ``start`` to the mean features of ``inputs`` (one basis) on
    ``data``; the layers fitted, in forward order; and those left at ``start`` with the reason."""
    data = fit_to_arch(arch, data)
    merged = load_model(arch, start, device)
    models = [load_model(arch, state, device) for state in inputs]
    example, _ = next(iter(data.batches(2)))
    sites, unfitted = fitting_sites(merged, example.to(device))
    for position, site in enumerate(sites):
        _fit_site(
            merged,
            models,
            site,
            data,
            ridge=ridge,
            batch_size=batch_size,
            device=device,
            reporter=reporter.sub(position / len(sites), 1 / len(sites)),
        )
    fitted = {key: value.detach() for key, value in merged.state_dict().items()}
    return fitted, [site.layer for site in sites], unfitted


def _outputs(model: nn.Module, names: list[str], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of the modules ``names`` on ``inputs``."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str, _: torch.Tensor, output: torch.Tensor) -> None:
        outputs[name] = output

    with watch_features(model, layers=names, on_layer=keep):
        model(inputs)
    return outputs


@torch.inference_mode()
def feature_error(
    arch: Architecture,
    state: StateDict,
    inputs: Sequence[StateDict],
    data: Dataset,
    *,
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """Per weighted layer, how far the pre-activations of ``state`` are from the mean of the
    ``inputs``' (one basis) on ``data``: sum ||Z - T||^2 / sum ||T||^2, summed over examples,
    positions and units. The quantity feature averaging minimises, layer by layer."""
    data = fit_to_arch(arch, data)
    model = load_model(arch, state, device)
    models = [load_model(arch, input_state, device) for input_state in inputs]
    example, _ = next(iter(data.batches(2)))
    sites, _ = fitting_sites(model, example.to(device))
    names = [site.pre_activation for site in sites]
    squared_error = dict.fromkeys(names, 0.0)
    squared_target = dict.fromkeys(names, 0.0)
    for batch, _ in data.batches(batch_size):
        batch = batch.to(device)
        seen = [_outputs(each, names, batch) for each in [model, *models]]
        for name in names:
            target = torch.stack([outputs[name] for outputs in seen[1:]]).mean(0).double()
            squared_error[name] += float((seen[0][name].double() - target).pow(2).sum())
            squared_target[name] += float(target.pow(2).sum())
    return {
        site.layer: squared_error[site.pre_activation]
        / max(squared_target[site.pre_activation], 1e-30)
        for site in sites
    }
