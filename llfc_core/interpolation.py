"""Linear interpolation of two modes, theta_alpha = alpha * theta_A + (1 - alpha) * theta_B.

alpha = 1 is A and alpha = 0 is B, as in the paper. For BatchNorm nets the running statistics of
theta_alpha are not the interpolation of A's and B's (the variance of a mixture is not the mixture
of variances), so they are re-estimated on training data ("reset BN", Jordan et al. 2022).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset, fit_to_arch
from llfc_core.device import resolve_device
from llfc_core.errors import InvalidParameterError
from llfc_core.models import load_model
from llfc_core.pair import check_same_layout
from llfc_core.params import DEFAULT_BATCH_SIZE
from llfc_core.permutation import StateDict
from llfc_core.placement import place_dataset
from llfc_core.progress import Reporter


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float if it lies in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
        raise InvalidParameterError(f"Every alpha must be a number from 0 to 1, got {alpha!r}.")
    return float(alpha)


def interpolate_states(
    state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], alpha: float
) -> StateDict:
    """alpha * A + (1 - alpha) * B for every floating tensor; integer counters are taken from A."""
    alpha = check_alpha(alpha)
    mixed: StateDict = {}
    for key, tensor_a in state_a.items():
        tensor_b = state_b[key]
        if tensor_a.is_floating_point():
            mixed[key] = torch.lerp(tensor_b, tensor_a, alpha)
        else:
            mixed[key] = tensor_a.clone()
    return mixed


def batch_norm_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of the model."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reset_batch_norm(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    reporter: Reporter | None = None,
) -> None:
    """Re-estimate every BatchNorm's running mean and variance on ``dataset`` (exact averages).

    Batch ``k`` (from 1) is averaged in with momentum ``1/k``: the cumulative moving average,
    the exact mean over all batches. It is what ``momentum=None`` computes, bit for bit, but
    ``momentum=None`` makes every BatchNorm forward read ``float(num_batches_tracked)``, a
    device-to-host synchronisation per layer and batch on a GPU; a Python float set here is not.

    ``dataset`` must already be shaped for the model. The model is left in eval mode.
    """
    reporter = reporter or Reporter()
    layers = batch_norm_modules(model)
    saved_momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
    model.train()
    total = dataset.num_batches(batch_size)
    for index, (inputs, _) in enumerate(dataset.batches(batch_size)):
        for layer in layers:
            layer.momentum = 1.0 / (index + 1)
        model(inputs.to(device))
        reporter.report((index + 1) / total, "re-estimating BatchNorm statistics")
    for layer, momentum in zip(layers, saved_momenta, strict=True):
        layer.momentum = momentum
    model.eval()


def interpolate_checkpoint(
    arch: Architecture,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    alpha: float,
    bn_data: Dataset | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
) -> StateDict:
    """theta_alpha as a state dict; BatchNorm statistics re-estimated on ``bn_data`` if given."""
    check_same_layout(state_a, state_b)
    mixed = interpolate_states(state_a, state_b, alpha)
    if not arch.has_batch_norm or bn_data is None:
        return mixed
    device = device or resolve_device("auto")
    model = load_model(arch, mixed, device)
    bn_batches = place_dataset(fit_to_arch(arch, bn_data), device)
    reset_batch_norm(model, bn_batches, batch_size=batch_size, device=device, reporter=reporter)
    return {key: value.cpu() for key, value in model.state_dict().items()}
