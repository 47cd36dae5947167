"""One pair's LMC under each asked-for repair, and the variance collapse REPAIR corrects.

When an analysis is given a list of repairs (``"repair": ["none", "repair"]``), the first is
the one :func:`llfc_core.analysis.pair_metrics.measure_pair` measures everything under; this
module adds the loss and error path of every other one (one evaluation of theta_alpha per
alpha, the barriers against that repair's own endpoints) and, at every LLFC alpha, the variance
ratio of theta_alpha at every repair site (:func:`llfc_core.repair.variance_ratio`): theta_alpha
as it stands before REPAIR (its BatchNorm statistics re-estimated in a BatchNorm net, as it
otherwise is nothing) against the mixture of A's and B's standard deviations. Statistics are
measured on the analysis's training data, losses on its data.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from llfc_core.analysis.config import AnalysisConfig, alpha_key
from llfc_core.analysis.pair_metrics import barrier
from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset
from llfc_core.interpolation import interpolate_states
from llfc_core.models import load_model
from llfc_core.progress import Reporter
from llfc_core.repair import (
    PathRepair,
    channel_statistics,
    default_repair_mode,
    settle_endpoint,
    variance_ratio,
)
from llfc_core.training import evaluate_model
from llfc_results import Lmc, VarianceRatio
from llfc_results.analysis import Numbers


def _theta(
    arch: Architecture,
    states: tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]],
    endpoints: tuple[nn.Module, nn.Module],
    path_repair: PathRepair,
    alpha: float,
    device: torch.device,
    reporter: Reporter,
) -> nn.Module:
    """theta_alpha repaired by ``path_repair`` (A and B themselves at alpha 1 and 0)."""
    if alpha in (0.0, 1.0):
        return endpoints[0] if alpha == 1.0 else endpoints[1]
    model = load_model(arch, interpolate_states(states[0], states[1], alpha), device)
    path_repair.settle(model, alpha, reporter)
    return model


def _lmc_under(
    mode: str,
    arch: Architecture,
    states: tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]],
    dataset: Dataset,
    config: AnalysisConfig,
    *,
    bn_data: Dataset,
    device: torch.device,
    reporter: Reporter,
) -> Lmc:
    batch_size = config.batch_size
    model_a, model_b = (
        settle_endpoint(
            load_model(arch, state, device),
            arch,
            mode,
            bn_data,
            batch_size=batch_size,
            device=device,
        )
        for state in states
    )
    endpoints = (model_a, model_b)
    path_repair = PathRepair(mode, *endpoints, bn_data, batch_size=batch_size, device=device)
    losses: list[float] = []
    errors: list[float] = []
    for index, alpha in enumerate(config.alphas):
        stage = reporter.sub(index / len(config.alphas), 1 / len(config.alphas))
        model = _theta(arch, states, endpoints, path_repair, alpha, device, stage.sub(0.0, 0.8))
        loss, error = evaluate_model(arch, model, dataset, device=device, batch_size=batch_size)
        losses.append(loss)
        errors.append(error)
        stage.report(1.0, f"LMC with repair {mode!r}: alpha={alpha:g}")
    at_a, at_b = (
        evaluate_model(arch, model, dataset, device=device, batch_size=batch_size)
        for model in endpoints
    )
    return Lmc(
        alphas=list(config.alphas),
        loss=losses,
        error=errors,
        loss_barrier=barrier(losses, config.alphas, at_a[0], at_b[0]),
        error_barrier=barrier(errors, config.alphas, at_a[1], at_b[1]),
    )


def _variance_ratio(
    arch: Architecture,
    states: tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]],
    config: AnalysisConfig,
    *,
    bn_data: Dataset,
    device: torch.device,
    reporter: Reporter,
) -> VarianceRatio:
    batch_size = config.batch_size
    endpoints = (load_model(arch, states[0], device), load_model(arch, states[1], device))
    repair = PathRepair(
        "repair",
        *endpoints,
        bn_data,
        batch_size=batch_size,
        device=device,
        reporter=reporter.sub(0.0, 0.3),
    )
    before_repair = PathRepair(
        default_repair_mode(arch), *endpoints, bn_data, batch_size=batch_size, device=device
    )
    ratios: dict[str, Numbers] = {}
    for index, alpha in enumerate(config.llfc_alphas):
        stage = reporter.sub(
            0.3 + 0.7 * index / len(config.llfc_alphas), 0.7 / len(config.llfc_alphas)
        )
        model = _theta(arch, states, endpoints, before_repair, alpha, device, stage.sub(0.0, 0.5))
        measured = channel_statistics(
            model,
            repair.sites,
            bn_data,
            batch_size=batch_size,
            device=device,
            reporter=stage.sub(0.5, 0.5),
        )
        by_site = variance_ratio(measured, repair.targets(alpha))
        ratios[alpha_key(alpha)] = [by_site[site.name] for site in repair.sites]
    return VarianceRatio(layers=[site.name for site in repair.sites], ratio=ratios)


def measure_repairs(
    arch: Architecture,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    dataset: Dataset,
    config: AnalysisConfig,
    measured: Lmc,
    *,
    bn_data: Dataset,
    device: torch.device,
    reporter: Reporter,
) -> tuple[dict[str, Lmc], VarianceRatio]:
    """The LMC of the pair under every repair of ``config`` (``measured``: under the first) and
    its variance ratios. ``dataset`` and ``bn_data`` must already be shaped for the arch."""
    modes = config.repair_modes(arch.has_batch_norm)
    states = (state_a, state_b)
    share = 1.0 / len(modes)
    repairs = {modes[0]: measured}
    for index, mode in enumerate(modes[1:], start=1):
        repairs[mode] = _lmc_under(
            mode,
            arch,
            states,
            dataset,
            config,
            bn_data=bn_data,
            device=device,
            reporter=reporter.sub((index - 1) * share, share),
        )
    ratio = _variance_ratio(
        arch,
        states,
        config,
        bn_data=bn_data,
        device=device,
        reporter=reporter.sub(1.0 - share, share),
    )
    return repairs, ratio
