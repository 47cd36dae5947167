"""Training the modes whose connectivity is studied: SGD with momentum, warmup then cosine decay.

Two ways to get a pair of modes, as in the paper: independent runs from different seeds (which
are usually *not* linearly connected until matched), or the spawning method of Frankle et al.,
where one run is forked after ``spawn_epochs`` and the copies continue on different data orders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from llfc_core.archs.base import Architecture
from llfc_core.data import Dataset, fit_to_arch
from llfc_core.device import deterministic_convolutions, resolve_device
from llfc_core.errors import CheckpointMismatchError, DatasetError, InvalidParameterError
from llfc_core.params import MAX_BATCH_SIZE, MAX_SEED, check_int
from llfc_core.permutation import StateDict
from llfc_core.placement import place_dataset
from llfc_core.precision import DEFAULT_PRECISION, Precision, check_precision, float32_precision
from llfc_core.progress import Reporter

MAX_EPOCHS = 1000
MAX_MODES = 64
OPTIMIZERS = ("sgd", "adamw")
"""SGD with momentum (the convolutional nets' usual choice) or AdamW (what transformers need:
a small ViT on the digits stays at chance under SGD)."""
DROPOUT_STREAM = 1
"""Tells the seeds of an epoch's dropout masks from those of its data order."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (shared by every mode of a pair).

    The learning rate follows a per-step schedule over the ``epochs * batches_per_epoch``
    steps of the whole run: a linear warmup over the first ``warmup_fraction`` of the steps,
    then a cosine decay to zero (see :func:`scheduled_lr`).
    """

    epochs: int = 10
    seed: int = 0
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.1
    spawn_epochs: int = 0
    optimizer: str = "sgd"
    """One of :data:`OPTIMIZERS`; AdamW uses ``lr`` and ``weight_decay`` (decoupled), not
    ``momentum``."""
    precision: Precision = DEFAULT_PRECISION
    """The float32 arithmetic of the training steps (``llfc_core/precision.py``): ``"fp32"``,
    or ``"tf32"``, faster on recent GPUs. Evaluation runs in the caller's precision."""

    def __post_init__(self) -> None:
        _require_int("epochs", self.epochs, 1, MAX_EPOCHS)
        _require_int("seed", self.seed, 0, MAX_SEED)
        _require_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _require_real("lr", self.lr, 0.0, 10.0, low_open=True)
        _require_real("momentum", self.momentum, 0.0, 1.0, high_open=True)
        _require_real("weight_decay", self.weight_decay, 0.0, 1.0)
        _require_real("warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        _require_int("spawn_epochs", self.spawn_epochs, 0, self.epochs)
        if self.optimizer not in OPTIMIZERS:
            raise InvalidParameterError(
                f"'optimizer' must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}."
            )
        check_precision(self.precision)


def _require_int(name: str, value: object, low: int, high: int) -> None:
    check_int(value, low, high, f"The training parameter '{name}'")


def _require_real(
    name: str,
    value: object,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    valid = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and (low < value if low_open else low <= value)
        and (value < high if high_open else value <= high)
    )
    if not valid:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise InvalidParameterError(
            f"The training parameter '{name}' must be a number in {interval}, got {value!r}."
        )


def scheduled_lr(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of step ``t`` (0-based) of a run of ``T = total_steps`` steps.

    With ``W = round(warmup_fraction * T)`` warmup steps:
    ``lr_t = lr * (t + 1) / W`` for ``t < W`` (the first step is not at zero), then
    ``lr_t = lr * (1 + cos(pi * (t - W) / (T - W))) / 2``, which starts at ``lr`` and
    reaches ~0 at the last step. A forked run continues this same schedule.
    """
    warmup_steps = round(config.warmup_fraction * total_steps)
    if step < warmup_steps:
        return config.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_mode(
    arch: Architecture,
    dataset: Dataset,
    config: TrainConfig,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
    init_state: StateDict | None = None,
    data_seed: int | None = None,
    start_epoch: int = 0,
    end_epoch: int | None = None,
) -> StateDict:
    """Epochs ``[start_epoch, end_epoch)`` of a run of ``config.epochs`` epochs; the state on CPU.

    The model starts from ``init_state`` or, without one, from ``arch.build()`` seeded with
    ``config.seed`` (built on the CPU, so the initial weights do not depend on the device).
    Epoch ``e`` draws its data order from a generator seeded by ``(data_seed, e)``
    (``data_seed`` defaults to ``config.seed``), and its dropout masks from the global
    generators seeded by ``(data_seed, e, 1)`` (restored afterwards), so a run split into pieces
    sees the same batches and masks as one uninterrupted run. Loss: the mean cross-entropy of
    the arch's task (per example for a classifier, per next token for a language model);
    optimiser: SGD with momentum and weight decay, or AdamW (``config.optimizer``; decay applied
    to every parameter), stepped at the learning rate of :func:`scheduled_lr` for the step's
    position in the whole run. The optimiser is created afresh, so a run resumed from
    ``init_state`` starts with empty momentum (and AdamW moment) buffers.
    Bit-for-bit reproducible on CPU for the same arguments.
    """
    end_epoch = config.epochs if end_epoch is None else end_epoch
    if not 0 <= start_epoch <= end_epoch <= config.epochs:
        raise InvalidParameterError(
            f"Training epochs {start_epoch} to {end_epoch} are not within a run of "
            f"{config.epochs} epochs."
        )
    device = device or resolve_device()
    reporter = reporter or Reporter()
    data = fit_to_arch(arch, dataset)
    if data.num_examples == 0:
        raise DatasetError(f"The dataset '{data.name}' holds no examples to train on.")
    data = place_dataset(data, device)
    data_seed = config.seed if data_seed is None else data_seed
    task = arch.task

    model = _trainable_model(arch, config.seed, init_state).to(device)
    model.train()
    optimizer = _optimizer(model, config)
    steps_per_epoch = data.num_batches(config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    first_step = start_epoch * steps_per_epoch
    num_steps = (end_epoch - start_epoch) * steps_per_epoch

    reporter.report(0.0, f"training epoch {start_epoch + 1}/{config.epochs}")
    rng_devices = [device] if device.type == "cuda" else []
    with (
        float32_precision(config.precision),
        deterministic_convolutions(),
        torch.random.fork_rng(devices=rng_devices),
    ):
        for epoch in range(start_epoch, end_epoch):
            stage = f"training epoch {epoch + 1}/{config.epochs}"
            loss_sum = torch.zeros((), device=device)
            generator = torch.Generator().manual_seed(_epoch_seed(data_seed, epoch))
            torch.manual_seed(_epoch_seed(data_seed, epoch, DROPOUT_STREAM))
            for index, (x, y) in enumerate(data.shuffled_batches(config.batch_size, generator)):
                step = epoch * steps_per_epoch + index
                for group in optimizer.param_groups:
                    group["lr"] = scheduled_lr(config, step, total_steps)
                loss = task.mean_loss(_logits(model(x.to(device))), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
                loss_sum += loss.detach()
                reporter.report((step + 1 - first_step) / num_steps, stage)
            # One host-device sync per epoch: a diverged run stops here instead of returning NaNs.
            if not torch.isfinite(loss_sum):
                raise InvalidParameterError(
                    f"Training diverged in epoch {epoch + 1} (the loss became NaN or infinite); "
                    f"use a learning rate below {config.lr} or check the data and initial weights."
                )
    reporter.report(1.0, "training done")
    # The arch's own keys: a library model may hold tensors its traced graph never uses
    # (torchvision's auxiliary classifiers, run in training only).
    trained = model.state_dict()
    return {key: trained[key].detach().to("cpu", copy=True) for key in arch.expected_shapes()}


def train_modes(
    arch: Architecture,
    dataset: Dataset,
    config: TrainConfig,
    num_modes: int = 2,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
) -> list[StateDict]:
    """``num_modes`` trained modes, independent or spawned from a shared run.

    ``spawn_epochs == 0``: mode ``i`` is a full run with seed ``config.seed + i`` (its own
    initialisation and data order). ``spawn_epochs = k > 0``: one run of ``k`` epochs from
    ``config.seed`` is copied and copy ``i`` trains the remaining epochs with data seed
    ``config.seed + i``; each copy follows the learning-rate schedule of a single run of
    ``config.epochs`` epochs, and its momentum buffer restarts empty at the fork. Copy 0 thus
    sees the data of the uninterrupted run from ``config.seed``. With ``k == epochs`` all modes
    are the shared model itself.
    """
    _require_int("num_modes", num_modes, 1, MAX_MODES)
    if config.seed + num_modes - 1 > MAX_SEED:
        raise InvalidParameterError(
            f"Modes use seeds {config.seed} to {config.seed + num_modes - 1}, beyond the largest "
            f"seed {MAX_SEED}; choose a smaller seed."
        )
    reporter = reporter or Reporter()
    device = device or resolve_device()
    shared_epochs = config.spawn_epochs
    if shared_epochs == 0:
        return [
            train_mode(
                arch,
                dataset,
                replace(config, seed=config.seed + index),
                device=device,
                reporter=reporter.sub(index / num_modes, 1 / num_modes),
            )
            for index in range(num_modes)
        ]
    # Progress is shared out by epochs of work: k shared, then (epochs - k) per copy.
    forked_epochs = config.epochs - shared_epochs
    total_epochs = shared_epochs + num_modes * forked_epochs
    shared_state = train_mode(
        arch,
        dataset,
        config,
        device=device,
        reporter=reporter.sub(0.0, shared_epochs / total_epochs),
        end_epoch=shared_epochs,
    )
    modes = []
    for index in range(num_modes):
        start = (shared_epochs + index * forked_epochs) / total_epochs
        modes.append(
            train_mode(
                arch,
                dataset,
                config,
                device=device,
                reporter=reporter.sub(start, forked_epochs / total_epochs),
                init_state=shared_state,
                data_seed=config.seed + index,
                start_epoch=shared_epochs,
            )
        )
    return modes


def evaluate(
    arch: Architecture,
    state: StateDict,
    dataset: Dataset,
    device: torch.device | None = None,
    batch_size: int = 512,
    reporter: Reporter | None = None,
) -> tuple[float, float]:
    """``(loss, error)`` of the model ``state`` on every example of ``dataset``: the arch
    holding ``state``, measured by :func:`evaluate_model`."""
    device = device or resolve_device()
    model = _initial_model(arch, 0, state).to(device)
    return evaluate_model(
        arch, model, dataset, device=device, batch_size=batch_size, reporter=reporter
    )


def evaluate_model(
    arch: Architecture,
    model: nn.Module,
    dataset: Dataset,
    device: torch.device | None = None,
    batch_size: int = 512,
    reporter: Reporter | None = None,
) -> tuple[float, float]:
    """``(loss, error)`` of ``model`` (built from ``arch``, on ``device``) on every example of
    ``dataset``; the model is left in eval mode.

    ``loss = (1/P) sum_p CE(f_p, y_p)`` and ``error = (1/P) #{p : argmax f_p != y_p}`` over the
    P predictions of the arch's task (:mod:`llfc_core.tasks`): one per example for a
    classifier, each next token for a language model. Computed in eval mode (BatchNorm uses
    its running statistics), accumulated in float64 on the device and read back once.
    """
    device = device or resolve_device()
    reporter = reporter or Reporter()
    data = fit_to_arch(arch, dataset)
    if data.num_examples == 0:
        raise DatasetError(f"The dataset '{data.name}' holds no examples to evaluate on.")
    data = place_dataset(data, device)
    model.eval()
    task = arch.task
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    predictions = 0
    num_batches = data.num_batches(batch_size)
    with torch.inference_mode():
        for index, (x, y) in enumerate(data.batches(batch_size)):
            batch_loss, batch_wrong = task.summed(model(x.to(device)), y.to(device))
            loss_sum += batch_loss.double()
            wrong += batch_wrong
            predictions += task.predictions(y)
            reporter.report((index + 1) / num_batches, "evaluating")
    return loss_sum.item() / predictions, wrong.item() / predictions


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )


def _logits(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A model's logits: torchvision's GoogLeNet and Inception return their auxiliary
    classifiers' beside them in training, first the main ones (the auxiliary ones, which the
    models the other jobs run do not have, are not trained)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def _trainable_model(arch: Architecture, seed: int, state: StateDict | None) -> nn.Module:
    """``arch.trainable_model()`` under a fixed seed (leaving the global RNG as it was), then
    ``state``, which may leave out what the arch's built model does not hold."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device("cpu"):
            model = arch.trainable_model()
    if state is not None:
        unexpected = model.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise CheckpointMismatchError(
                f"The weights do not fit the {arch.name} arch: unexpected {', '.join(unexpected)}"
            )
    return model


def _initial_model(arch: Architecture, seed: int, state: StateDict | None) -> nn.Module:
    """``arch.build()`` under a fixed seed (leaving the global RNG as it was), then ``state``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device("cpu"):
            model = arch.build()
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise CheckpointMismatchError(
                f"The weights do not fit the {arch.name} arch: {error}"
            ) from error
    return model


def _epoch_seed(data_seed: int, epoch: int, *stream: int) -> int:
    """A well-mixed 64-bit seed for epoch ``epoch`` of the data order ``data_seed`` (of the
    dropout masks with ``stream`` :data:`DROPOUT_STREAM`)."""
    entropy = [data_seed, epoch, *stream]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
