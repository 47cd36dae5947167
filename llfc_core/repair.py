"""Repairing an interpolation of models: nothing, BatchNorm reset, or REPAIR.

A mixture theta = sum_i w_i theta_i of models already permuted into one basis (two modes on the
LMC path, theta_alpha = alpha A + (1 - alpha) B, or many for a merge) loses variance: its
channels' pre-activations spread less than the models' own ("variance collapse"), which
compounds layer after layer. Three ways of dealing with it (:data:`REPAIR_MODES`):

- ``none``: the mixture as it is.
- ``reset``: every BatchNorm's running statistics re-estimated on data (nothing to do in a net
  without BatchNorm).
- ``repair``: REPAIR (Jordan, Sedghi, Saukh, Entezari, Neyshabur 2022, "REPAIR: REnormalizing
  Permuted Activations for Interpolation Repair"). At every repair site, each channel's mean and
  standard deviation over the data are set to the mixture of the models' own:
  mu_target = sum_i w_i mu_i and sigma_target = sum_i w_i sigma_i, by the per-channel affine map
  x -> s (x - mu_mixed) + mu_target, s = sigma_target / sigma_mixed, folded into the layer that
  produces the site: its weight's output rows times s, its bias b -> s b + mu_target - s mu_mixed.

Repair sites (:func:`find_repair_sites`) are found from one forward pass, in forward order:

- the output of every BatchNorm with affine terms (REPAIR's sites in normalised nets, residual
  branches and shortcuts included), folded into gamma and beta;
- the output of every Linear or Conv2d (or GPT-2's Conv1D) that an elementwise activation reads
  directly (REPAIR's sites in nets without normalisation: each hidden layer of an MLP, each conv
  of a plain VGG), folded into the weight and bias.

The logits are never a site. A layer the pass calls more than once is not one (one fold would
act on each call). Where the fold is impossible the site is listed in
:attr:`RepairSites.unrepaired` and left as it is: a Linear/Conv without bias feeding an
activation (nothing can hold the shift), a BatchNorm without affine terms. An activation whose
input is no layer's output (a ReLU after a residual addition) is no site: in a BatchNorm ResNet
the addition's inputs are.

Sequential, exactly. REPAIR's code corrects every site in one pass, each with the batch's own
statistics (a BatchNorm in training mode), so a later site's statistics carry the batch noise of
the earlier corrections, and a model repaired against itself would change. Here the sites are
repaired in forward order, site k measured on the model whose sites 1..k-1 are already folded,
so its statistics are those of the network that is finally stored. Each site costs one pass over
the data that stops at that site: about (k + 1) / 2 full passes for k sites. The models' own
statistics take one pass each.

Statistics are sums over the data (sum d, sum d^2 per channel, d = x less a per-channel shift,
accumulated in float64), so memory does not depend on the number of examples; mean and standard
deviation are the population ones, over every example and position (pixel, token) of a channel.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset, fit_to_arch
from llfc_core.device import resolve_device
from llfc_core.errors import InvalidParameterError
from llfc_core.features import (
    WEIGHTED_LAYER_TYPES,
    is_activation_module,
    is_transposed_linear,
    watch_features,
)
from llfc_core.interpolation import batch_norm_modules, interpolate_states, reset_batch_norm
from llfc_core.models import load_model
from llfc_core.pair import check_same_layout
from llfc_core.params import DEFAULT_BATCH_SIZE, REPAIR_MODES
from llfc_core.permutation import StateDict
from llfc_core.progress import Reporter

CONSTANT_CHANNEL = 1e-6
"""A channel whose standard deviation is below this fraction of its scale is constant: it is
shifted to its target mean, never stretched (a float32 round-off is no spread to scale up)."""
WEIGHT_SUM_TOLERANCE = 1e-6


def check_repair_mode(mode: object) -> str:
    """``mode`` if it is one of :data:`REPAIR_MODES`."""
    if not isinstance(mode, str) or mode not in REPAIR_MODES:
        raise InvalidParameterError(
            f"'repair' must be one of {', '.join(REPAIR_MODES)} (or a list of them for analyze), "
            f"got {mode!r}."
        )
    return mode


def default_repair_mode(arch: Architecture) -> str:
    """'reset' for BatchNorm nets (their interpolations' statistics are otherwise wrong), else
    'none': what every job did before REPAIR was offered."""
    return "reset" if arch.has_batch_norm else "none"


def needs_data(arch: Architecture, mode: str) -> bool:
    """Whether ``mode`` changes anything on this arch, and so measures on data."""
    return mode == "repair" or (mode == "reset" and arch.has_batch_norm)


@dataclass(frozen=True)
class RepairSite:
    """A layer whose output channels REPAIR renormalises."""

    name: str
    channel_axis: int
    """Axis of the layer's output that holds the channels (1 for conv maps, -1 for features)."""
    weight_axis: int
    """Axis of the layer's weight that holds its output channels."""


@dataclass(frozen=True)
class RepairSites:
    """Every repair site of a model in forward order, and the sites that cannot be folded."""

    sites: list[RepairSite]
    unrepaired: list[str]

    @property
    def names(self) -> list[str]:
        return [site.name for site in self.sites]


@dataclass(frozen=True)
class ChannelStatistics:
    """Per-channel mean and population standard deviation of one site, float64."""

    mean: torch.Tensor
    std: torch.Tensor


SiteStatistics = dict[str, ChannelStatistics]


def _producer_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "norm"
    if isinstance(module, WEIGHTED_LAYER_TYPES) or is_transposed_linear(module):
        return "layer"
    return None


def _site(name: str, module: nn.Module) -> RepairSite:
    if isinstance(module, nn.Linear):
        return RepairSite(name, channel_axis=-1, weight_axis=0)
    if is_transposed_linear(module):
        return RepairSite(name, channel_axis=-1, weight_axis=1)
    return RepairSite(name, channel_axis=1, weight_axis=0)


@torch.no_grad()
def find_repair_sites(model: nn.Module, example: torch.Tensor) -> RepairSites:
    """The repair sites of ``model`` (see the module docstring), from one forward of ``example``
    (a batch of one input shaped for the model)."""
    modules = dict(model.named_modules())
    producers = [name for name, module in modules.items() if _producer_kind(module)]
    activations = [name for name, module in modules.items() if is_activation_module(module)]
    outputs: list[tuple[str, torch.Tensor]] = []
    calls: dict[str, int] = {}
    read_by_activation: set[str] = set()

    def on_producer(name: str, layer_input: torch.Tensor, output: torch.Tensor) -> None:
        calls[name] = calls.get(name, 0) + 1
        outputs.append((name, output))

    def on_activation(name: str, pre_activation: torch.Tensor, output: torch.Tensor) -> None:
        read_by_activation.update(n for n, out in outputs if out is pre_activation)

    with watch_features(
        model, relus=activations, on_relu=on_activation, layers=producers, on_layer=on_producer
    ):
        model_output = model(example)
    sites: list[RepairSite] = []
    unrepaired: list[str] = []
    for name, output in outputs:
        module = modules[name]
        norm = _producer_kind(module) == "norm"
        if output is model_output or calls[name] > 1 or not (norm or name in read_by_activation):
            continue
        if module.weight is not None and module.bias is not None:
            sites.append(_site(name, module))
        else:
            unrepaired.append(name)
    return RepairSites(sites=sites, unrepaired=unrepaired)


class _StopForward(Exception):
    """Raised by the last measured site's hook: the rest of the forward pass is not needed."""


class _ChannelSums:
    """Sums of d = x - c and d^2 per channel, c the first batch's channel means: a shifted sum
    keeps E[d^2] - E[d]^2 from cancelling when a channel's mean is far above its spread."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.total: torch.Tensor | float = 0.0
        self.squares: torch.Tensor | float = 0.0

    def add(self, output: torch.Tensor, channel_axis: int) -> None:
        axis = channel_axis % output.dim()
        others = tuple(d for d in range(output.dim()) if d != axis)
        shape = [1] * output.dim()
        shape[axis] = -1
        if self.shift is None:
            self.shift = output.mean(others, dtype=torch.float64)
        deviation = output - self.shift.view(shape).to(output.dtype)
        self.count += output.numel() // output.shape[axis]
        self.total = self.total + deviation.sum(others, dtype=torch.float64)
        self.squares = self.squares + (deviation * deviation).sum(others, dtype=torch.float64)

    def statistics(self) -> ChannelStatistics:
        if self.shift is None or not isinstance(self.total, torch.Tensor):
            raise RuntimeError("A repair site produced no output during the statistics pass.")
        mean_deviation = self.total / self.count
        variance = (self.squares / self.count - mean_deviation * mean_deviation).clamp_min(0.0)
        return ChannelStatistics(mean=self.shift + mean_deviation, std=variance.sqrt())


@torch.no_grad()
def channel_statistics(
    model: nn.Module,
    sites: Sequence[RepairSite],
    data: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    reporter: Reporter | None = None,
) -> SiteStatistics:
    """Mean and standard deviation of every channel of every site over ``data`` (shaped for the
    model), in one pass that stops at the last site of ``sites`` (in forward order)."""
    reporter = reporter or Reporter()
    if not sites:
        return {}
    sums = {site.name: _ChannelSums() for site in sites}
    axes = {site.name: site.channel_axis for site in sites}
    last = sites[-1].name

    def on_site(name: str, layer_input: torch.Tensor, output: torch.Tensor) -> None:
        sums[name].add(output, axes[name])
        if name == last:
            raise _StopForward

    total = data.num_batches(batch_size)
    with watch_features(model, layers=list(sums), on_layer=on_site):
        for index, (inputs, _) in enumerate(data.batches(batch_size)):
            with contextlib.suppress(_StopForward):
                model(inputs.to(device))
            reporter.report((index + 1) / total, "measuring channel statistics")
    return {name: channel_sums.statistics() for name, channel_sums in sums.items()}


def _check_weights(weights: Sequence[float], count: int) -> list[float]:
    values = list(weights)
    if (
        len(values) != count
        or not all(isinstance(w, int | float) and math.isfinite(w) and w >= 0 for w in values)
        or abs(sum(values) - 1.0) > WEIGHT_SUM_TOLERANCE
    ):
        raise InvalidParameterError(
            f"A mixture of {count} models needs {count} non-negative weights summing to 1, "
            f"got {values!r}."
        )
    return [float(w) for w in values]


def mixture_targets(
    statistics: Sequence[Mapping[str, ChannelStatistics]], weights: Sequence[float]
) -> SiteStatistics:
    """REPAIR's target of every site: mean sum_i w_i mu_i, standard deviation sum_i w_i sigma_i."""
    weights = _check_weights(weights, len(statistics))
    targets = {}
    for name in statistics[0]:
        means = torch.stack([site_statistics[name].mean for site_statistics in statistics])
        stds = torch.stack([site_statistics[name].std for site_statistics in statistics])
        mixing = torch.tensor(weights, dtype=means.dtype, device=means.device).view(-1, 1)
        targets[name] = ChannelStatistics(mean=(mixing * means).sum(0), std=(mixing * stds).sum(0))
    return targets


@torch.no_grad()
def _fold(
    module: nn.Module, site: RepairSite, measured: ChannelStatistics, target: ChannelStatistics
) -> None:
    """Fold x -> s (x - mu_mixed) + mu_target into the layer: W -> s W, b -> s b + shift."""
    spread = measured.std > CONSTANT_CHANNEL * (measured.mean.abs() + target.std)
    scale = torch.where(spread, target.std / measured.std.clamp_min(1e-300), 1.0)
    shift = target.mean - scale * measured.mean
    weight, bias = module.weight, module.bias
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise RuntimeError(f"The repair site {site.name} has no weight and bias to fold into.")
    shape = [1] * weight.dim()
    shape[site.weight_axis] = -1
    # In place, in the weight's own dtype: a float64 product would hold two float64 copies of
    # the largest weight at once (four times its size), more than the rest of a repair.
    weight.mul_(scale.view(shape).to(weight.dtype))
    bias.copy_(bias.double() * scale + shift)


def repair_model(
    model: nn.Module,
    sites: Sequence[RepairSite],
    targets: Mapping[str, ChannelStatistics],
    data: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    reporter: Reporter | None = None,
) -> None:
    """REPAIR ``model`` in place: each site in forward order measured, then folded to its target."""
    reporter = reporter or Reporter()
    modules = dict(model.named_modules())
    for index, site in enumerate(sites):
        measured = channel_statistics(
            model,
            [site],
            data,
            batch_size=batch_size,
            device=device,
            reporter=reporter.sub(index / len(sites), 1 / len(sites)),
        )[site.name]
        _fold(modules[site.name], site, measured, targets[site.name])
    reporter.report(1.0, "repaired")


def variance_ratio(
    mixed: Mapping[str, ChannelStatistics], targets: Mapping[str, ChannelStatistics]
) -> dict[str, float | None]:
    """Per site: the mean over channels of sigma_mixed^2 / sigma_target^2, the mixture's variance
    against the variance REPAIR would give it (sigma_target = sum_i w_i sigma_i). Below 1: the
    variance has collapsed. Channels whose target is constant are left out (None: all are)."""
    ratios: dict[str, float | None] = {}
    for name, target in targets.items():
        live = target.std > 0
        ratios[name] = (
            float((mixed[name].std[live] / target.std[live]).pow(2).mean()) if live.any() else None
        )
    return ratios


def _example(data: Dataset, device: torch.device) -> torch.Tensor:
    return next(iter(data.batches(1)))[0].to(device)


def repair_mixture(
    arch: Architecture,
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    mixed: Mapping[str, torch.Tensor],
    data: Dataset,
    mode: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
) -> StateDict:
    """``mixed`` (= sum_i weights_i states_i, the states already in one basis) repaired by
    ``mode`` on ``data``, as a state dict on the CPU with ``mixed``'s keys.

    ``none`` returns ``mixed``; ``reset`` re-estimates its BatchNorm statistics; ``repair`` is
    REPAIR, its statistics measured on ``data`` (see the module docstring).
    """
    mode = check_repair_mode(mode)
    weights = _check_weights(weights, len(states))
    reporter = reporter or Reporter()
    if not needs_data(arch, mode):
        return dict(mixed)
    device = device or resolve_device("auto")
    data = fit_to_arch(arch, data)
    model = load_model(arch, mixed, device)
    if mode == "reset":
        reset_batch_norm(model, data, batch_size=batch_size, device=device, reporter=reporter)
    else:
        sites = find_repair_sites(model, _example(data, device)).sites
        share = 1.0 / (len(states) + 1)
        statistics = []
        for index, state in enumerate(states):
            statistics.append(
                channel_statistics(
                    load_model(arch, state, device),
                    sites,
                    data,
                    batch_size=batch_size,
                    device=device,
                    reporter=reporter.sub(index * share, share),
                )
            )
        repair_model(
            model,
            sites,
            mixture_targets(statistics, weights),
            data,
            batch_size=batch_size,
            device=device,
            reporter=reporter.sub(1.0 - share, share),
        )
    return {key: value.cpu() for key, value in model.state_dict().items()}


def interpolate_checkpoint(
    arch: Architecture,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    alpha: float,
    data: Dataset | None = None,
    repair: str | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
) -> StateDict:
    """theta_alpha = alpha A + (1 - alpha) B as a state dict, repaired by ``repair`` (default:
    :func:`default_repair_mode`) on ``data``. Without data the default repairs nothing, and a
    repair that needs data is refused."""
    check_same_layout(state_a, state_b)
    mode = default_repair_mode(arch) if repair is None else check_repair_mode(repair)
    mixed = interpolate_states(state_a, state_b, alpha)
    if data is None:
        if repair is not None and needs_data(arch, mode):
            raise InvalidParameterError(
                f"'repair': {mode!r} measures the interpolated network on data; give the job a "
                "dataset or a train_dataset, or ask for 'repair': 'none'."
            )
        return mixed
    return repair_mixture(
        arch,
        [state_a, state_b],
        [alpha, 1.0 - alpha],
        mixed,
        data,
        mode,
        batch_size=batch_size,
        device=device,
        reporter=reporter,
    )


def settle_endpoint(
    model: nn.Module,
    arch: Architecture,
    mode: str,
    data: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    reporter: Reporter | None = None,
) -> nn.Module:
    """``model`` (A or B) as the repair ``mode`` measures it, and as :class:`PathRepair` takes
    it: under 'reset' its BatchNorm statistics re-estimated on ``data`` like every other point
    of the path (so A with itself gives a flat path), otherwise as trained."""
    if mode == "reset" and arch.has_batch_norm:
        reset_batch_norm(model, data, batch_size=batch_size, device=device, reporter=reporter)
    return model


class PathRepair:
    """The repair of every theta_alpha = alpha A + (1 - alpha) B of one pair, A's and B's
    statistics measured once (``model_a`` and ``model_b`` as they will be measured: already
    reset under 'reset').

    :meth:`settle` repairs one theta_alpha in place. Under 'reset' every point, A and B
    included, has its BatchNorm statistics re-estimated; under 'repair' the endpoints are left
    as they are (their REPAIR is the identity) and every interior point is repaired.
    """

    def __init__(
        self,
        mode: str,
        model_a: nn.Module,
        model_b: nn.Module,
        data: Dataset,
        *,
        batch_size: int,
        device: torch.device,
        reporter: Reporter | None = None,
    ) -> None:
        reporter = reporter or Reporter()
        self.mode = check_repair_mode(mode)
        self.data = data
        self.batch_size = batch_size
        self.device = device
        self.sites: list[RepairSite] = []
        self.statistics: list[SiteStatistics] = []
        if self.mode == "repair":
            self.sites = find_repair_sites(model_a, _example(data, device)).sites
            self.statistics = [
                channel_statistics(
                    model,
                    self.sites,
                    data,
                    batch_size=batch_size,
                    device=device,
                    reporter=reporter.sub(index / 2, 1 / 2),
                )
                for index, model in enumerate((model_a, model_b))
            ]

    def targets(self, alpha: float) -> SiteStatistics:
        """REPAIR's target statistics of theta_alpha."""
        return mixture_targets(self.statistics, [alpha, 1.0 - alpha])

    def settle(self, model: nn.Module, alpha: float, reporter: Reporter) -> None:
        """Repair theta_alpha (``model``) in place."""
        if self.mode == "reset" and batch_norm_modules(model):
            reset_batch_norm(
                model, self.data, batch_size=self.batch_size, device=self.device, reporter=reporter
            )
        elif self.mode == "repair" and 0.0 < alpha < 1.0:
            repair_model(
                model,
                self.sites,
                self.targets(alpha),
                self.data,
                batch_size=self.batch_size,
                device=self.device,
                reporter=reporter,
            )
