"""STE matching (Git Re-Basin, Ainsworth, Hayase & Srinivasa 2023, Algorithm 2): a permutation
of B chosen so that the midpoint of A and permuted B has low loss on training data.

Proxy weights theta~ start at A's learned parameters. Every step, on one shuffled training batch:

1. pi = weight matching of B onto theta~ (:func:`~llfc_core.matching.weight.weight_matching`);
2. the midpoint 0.5 (theta_A + pi(theta_B)) is formed with pi(theta_B) replaced by
   pi(theta_B) + theta~ - stopgrad(theta~): its value is the true midpoint, and its gradient flows
   to theta~ as if the projection onto B's permutations were the identity (straight-through);
3. theta~ takes one Adam step (``lr``) on the midpoint's mean loss on the batch.

BatchNorm layers of the midpoint normalise with the batch's own statistics, as in the paper
(the midpoint's running statistics, A's, are meaningless for it); dropout is off. Each new pi is
scored by its midpoint loss on a fixed evaluation set (the first ``EVALUATION_EXAMPLES`` training
examples, in batches of ``batch_size``, BatchNorm as in training), and the best permutation seen,
weight matching of B onto A itself (the first step's pi) included, is returned; STE thus never
returns a permutation worse than weight matching on that set.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset
from llfc_core.errors import InvalidParameterError
from llfc_core.matching.weight import weight_matching
from llfc_core.models import load_model
from llfc_core.params import MAX_STE_EPOCHS, MAX_STE_LR, check_int
from llfc_core.permutation import (
    Permutation,
    PermutationSpec,
    apply_permutation,
    identity_permutation,
)
from llfc_core.progress import Reporter

EVALUATION_EXAMPLES = 1024
"""Training examples each candidate permutation's midpoint loss is measured on."""
DEFAULT_EPOCHS = 3
DEFAULT_LR = 1e-3
"""Adam's step size on the proxy weights (Git Re-Basin's choice)."""


@dataclass(frozen=True)
class SteConfig:
    """STE's own parameters: passes over the training data and the proxy's learning rate."""

    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR

    def __post_init__(self) -> None:
        check_int(self.epochs, 1, MAX_STE_EPOCHS, "The STE parameter 'epochs'")
        if (
            isinstance(self.lr, bool)
            or not isinstance(self.lr, int | float)
            or not 0.0 < self.lr <= MAX_STE_LR
        ):
            raise InvalidParameterError(
                f"The STE parameter 'lr' must be a number above 0 and at most {MAX_STE_LR:g}, "
                f"got {self.lr!r}."
            )


@dataclass(frozen=True)
class SteMatch:
    """The best permutation found, the midpoint loss of the identity, of weight matching's
    permutation and of the best one on the evaluation set, and the steps taken."""

    permutation: Permutation
    loss_identity: float
    loss_weight_matching: float
    loss_best: float
    steps: int


def _batch_statistics_mode(model: nn.Module) -> nn.Module:
    """``model`` in eval mode but for its BatchNorm layers, which use the batch's statistics."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
    return model


class _Midpoint:
    """Runs 0.5 (A + B') for any B' on the work model, leaving its buffers as they were."""

    def __init__(self, model: nn.Module, state_a: Mapping[str, torch.Tensor]) -> None:
        self.model = _batch_statistics_mode(model)
        self.parameter_names = [name for name, _ in model.named_parameters()]
        self.buffers = {name: buffer for name, buffer in model.named_buffers()}
        self.a = {name: state_a[name].detach() for name in self.parameter_names}

    def logits(self, b_side: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        midpoint = {name: 0.5 * (self.a[name] + b_side[name]) for name in self.parameter_names}
        # BatchNorm in training mode updates running statistics: give it copies to update.
        buffers = {name: buffer.clone() for name, buffer in self.buffers.items()}
        output: torch.Tensor = functional_call(self.model, {**midpoint, **buffers}, (inputs,))
        return output


def _evaluation_batches(
    dataset: Dataset, batch_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = []
    for inputs, labels in dataset.limit(EVALUATION_EXAMPLES).batches(batch_size):
        batches.append((inputs.to(device), labels.to(device)))
    return batches


def _training_batches(
    dataset: Dataset, batch_size: int, epochs: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        yield from dataset.shuffled_batches(batch_size, generator)


def ste_matching(
    arch: Architecture,
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    dataset: Dataset,
    config: SteConfig,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    reporter: Reporter | None = None,
) -> SteMatch:
    """The STE permutation of B onto A (see the module docstring); ``dataset`` shaped for the
    arch, states on ``device``."""
    reporter = reporter or Reporter()
    task = arch.task
    midpoint = _Midpoint(load_model(arch, state_a, device), state_a)
    evaluation = _evaluation_batches(dataset, batch_size, device)

    def evaluation_loss(perm: Permutation) -> float:
        permuted_b = apply_permutation(spec, perm, state_b)
        with torch.no_grad():
            total = sum(
                float(task.summed(midpoint.logits(permuted_b, inputs), labels)[0])
                for inputs, labels in evaluation
            )
            predictions = sum(task.predictions(labels) for _, labels in evaluation)
        return total / max(predictions, 1)

    loss_identity = evaluation_loss(identity_permutation(spec, state_a))
    proxy = {name: state_a[name].detach().clone().requires_grad_(True) for name in midpoint.a}
    optimizer = torch.optim.Adam(proxy.values(), lr=config.lr)
    total_steps = config.epochs * dataset.num_batches(batch_size)
    best: tuple[float, Permutation] | None = None
    loss_weight_matching = float("nan")
    last_scored: Permutation | None = None
    step = 0
    for step, (inputs, labels) in enumerate(
        _training_batches(dataset, batch_size, config.epochs, seed), start=1
    ):
        proxy_state = {**state_a, **{name: value.detach() for name, value in proxy.items()}}
        perm, _ = weight_matching(spec, proxy_state, state_b, seed=seed)
        if last_scored is None or any(
            not torch.equal(perm[name], last_scored[name]) for name in perm
        ):
            scored = evaluation_loss(perm)
            if best is None:
                loss_weight_matching = scored
            if best is None or scored < best[0]:
                best = (scored, perm)
            last_scored = perm
        permuted_b = apply_permutation(spec, perm, state_b)
        straight_through = {
            name: permuted_b[name] + proxy[name] - proxy[name].detach() for name in proxy
        }
        logits = midpoint.logits(straight_through, inputs.to(device))
        loss = task.mean_loss(logits, labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        reporter.report(
            step / total_steps,
            f"STE step {step} of {total_steps}, midpoint loss {float(loss.detach()):.4f}",
        )
    assert best is not None  # every dataset the caller passes has a batch
    return SteMatch(best[1], loss_identity, loss_weight_matching, best[0], step)
