import itertools
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import pytest
import torch
from support.vit import VIT_DIGITS
from torch import nn

from llfc_core.archs import ARCHITECTURES, parse_arch
from llfc_core.archs.base import Architecture
from llfc_core.data import ArrayDataset, SyntheticDataset, digits
from llfc_core.errors import CancelledError, CheckpointMismatchError, InvalidParameterError
from llfc_core.permutation import PermutationSpec, StateDict
from llfc_core.progress import Reporter
from llfc_core.training import (
    TrainConfig,
    evaluate,
    scheduled_lr,
    train_mode,
    train_modes,
)

CPU = torch.device("cpu")
FAST = TrainConfig(epochs=4, batch_size=32, lr=0.1)
"""Four epochs of 45 steps: enough for 64-128-128-10 to reach ~97% on the digits test split."""


@pytest.fixture(scope="module")
def digits_train() -> ArrayDataset:
    return digits("train")


@pytest.fixture(scope="module")
def small_train(digits_train: ArrayDataset) -> ArrayDataset:
    return digits_train.limit(320)


@pytest.fixture(scope="module")
def small_mlp() -> Architecture:
    return parse_arch({"name": "mlp", "widths": [64, 32, 10]})


def same_weights(a: StateDict, b: StateDict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def distance(a: StateDict, b: StateDict) -> float:
    return math.sqrt(sum(float((a[key] - b[key]).pow(2).sum()) for key in a))


def test_an_mlp_trained_on_digits_reaches_90_percent_test_accuracy(
    digits_train: ArrayDataset,
) -> None:
    arch = parse_arch({"name": "mlp", "widths": [64, 128, 128, 10]})
    state = train_mode(arch, digits_train, FAST, device=CPU)
    loss, error = evaluate(arch, state, digits("test"), device=CPU)
    assert error <= 0.10
    assert loss < 0.4
    assert all(value.device.type == "cpu" for value in state.values())


def test_the_same_seed_gives_bit_identical_weights(
    small_mlp: Architecture, small_train: ArrayDataset
) -> None:
    first = train_mode(small_mlp, small_train, FAST, device=CPU)
    second = train_mode(small_mlp, small_train, FAST, device=CPU)
    assert same_weights(first, second)


def test_different_seeds_give_different_initialisations_and_data_orders(
    small_mlp: Architecture, small_train: ArrayDataset
) -> None:
    first = train_mode(small_mlp, small_train, FAST, device=CPU)
    other_seed = train_mode(small_mlp, small_train, replace(FAST, seed=1), device=CPU)
    assert distance(first, other_seed) > 1.0
    # Same initial weights, another data order: still a different model.
    other_order = train_mode(small_mlp, small_train, FAST, device=CPU, data_seed=1)
    assert 0.0 < distance(first, other_order) < distance(first, other_seed)


def test_training_leaves_the_global_random_state_alone(
    small_mlp: Architecture, small_train: ArrayDataset
) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_mode(small_mlp, small_train.limit(64), TrainConfig(epochs=1), device=CPU)
    assert torch.equal(torch.rand(3), expected)


def test_a_run_split_at_an_epoch_continues_the_same_schedule_and_data(
    small_mlp: Architecture, small_train: ArrayDataset
) -> None:
    # Without momentum the optimiser has no state, so resuming must be exact.
    config = TrainConfig(epochs=4, batch_size=32, lr=0.1, momentum=0.0)
    whole = train_mode(small_mlp, small_train, config, device=CPU)
    first_half = train_mode(small_mlp, small_train, config, device=CPU, end_epoch=2)
    resumed = train_mode(
        small_mlp, small_train, config, device=CPU, init_state=first_half, start_epoch=2
    )
    assert same_weights(whole, resumed)
    assert not same_weights(whole, first_half)


def test_spawning_at_the_last_epoch_gives_identical_modes(
    small_mlp: Architecture, small_train: ArrayDataset
) -> None:
    config = TrainConfig(epochs=3, batch_size=32, lr=0.1, spawn_epochs=3)
    mode_a, mode_b = train_modes(small_mlp, small_train, config, device=CPU)
    assert same_weights(mode_a, mode_b)
    assert same_weights(mode_a, train_mode(small_mlp, small_train, config, device=CPU))


def test_spawned_modes_share_the_fork_and_then_differ(
    small_mlp: Architecture, small_train: ArrayDataset
) -> None:
    config = TrainConfig(epochs=4, batch_size=32, lr=0.1, spawn_epochs=2)
    mode_a, mode_b = train_modes(small_mlp, small_train, config, device=CPU)
    assert not same_weights(mode_a, mode_b)
    fork = train_mode(small_mlp, small_train, config, device=CPU, end_epoch=2)
    for data_seed, mode in enumerate((mode_a, mode_b)):
        from_fork = train_mode(
            small_mlp,
            small_train,
            config,
            device=CPU,
            init_state=fork,
            data_seed=data_seed,
            start_epoch=2,
        )
        assert same_weights(mode, from_fork)
    independent_a, independent_b = train_modes(
        small_mlp, small_train, TrainConfig(epochs=4, batch_size=32, lr=0.1), device=CPU
    )
    assert distance(mode_a, mode_b) < 0.5 * distance(independent_a, independent_b)


def test_independent_modes_use_consecutive_seeds(
    small_mlp: Architecture, small_train: ArrayDataset
) -> None:
    config = TrainConfig(epochs=1, seed=5)
    modes = train_modes(small_mlp, small_train, config, num_modes=3, device=CPU)
    expected = train_mode(small_mlp, small_train, TrainConfig(epochs=1, seed=7), device=CPU)
    assert len(modes) == 3 and same_weights(modes[2], expected)


def test_a_stop_request_cancels_training_between_batches(
    small_mlp: Architecture, small_train: ArrayDataset
) -> None:
    checks: list[int] = []

    def stop_after_three_batches() -> bool:
        checks.append(1)
        return len(checks) > 3

    reporter = Reporter(should_stop=stop_after_three_batches)
    with pytest.raises(CancelledError):
        train_modes(small_mlp, small_train, FAST, device=CPU, reporter=reporter)
    assert len(checks) == 4


@pytest.mark.parametrize("spawn_epochs", [0, 1])
def test_progress_never_goes_back_and_ends_at_one(
    small_mlp: Architecture, small_train: ArrayDataset, spawn_epochs: int
) -> None:
    fractions: list[float] = []
    stages: set[str] = set()

    def record(fraction: float, stage: str) -> None:
        fractions.append(fraction)
        stages.add(stage)

    config = TrainConfig(epochs=2, batch_size=64, spawn_epochs=spawn_epochs)
    train_modes(small_mlp, small_train, config, device=CPU, reporter=Reporter(callback=record))
    assert fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    assert all(later >= earlier for earlier, later in itertools.pairwise(fractions))
    assert len(fractions) > 2 * 5 * 2
    assert "training epoch 2/2" in stages


def test_the_schedule_warms_up_linearly_then_decays_as_a_cosine() -> None:
    config = TrainConfig(lr=0.2, warmup_fraction=0.1)
    total = 100
    rates = [scheduled_lr(config, step, total) for step in range(total)]
    assert rates[0] == pytest.approx(0.02) and rates[4] == pytest.approx(0.1)
    assert rates[9] == pytest.approx(0.2) and rates[10] == pytest.approx(0.2)
    assert rates[55] == pytest.approx(0.1)  # halfway through the cosine part
    assert rates[-1] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert all(b <= a for a, b in itertools.pairwise(rates[10:]))
    no_warmup = TrainConfig(lr=0.2, warmup_fraction=0.0)
    assert scheduled_lr(no_warmup, 0, total) == pytest.approx(0.2)


def test_evaluate_computes_mean_cross_entropy_and_error_rate(small_mlp: Architecture) -> None:
    data = digits("test")
    zero_model = {key: torch.zeros(shape) for key, shape in small_mlp.expected_shapes().items()}
    # All logits are zero: every loss is ln 10 and the prediction is always class 0.
    loss, error = evaluate(small_mlp, zero_model, data, device=CPU, batch_size=100)
    assert loss == pytest.approx(math.log(10))
    assert error == pytest.approx(float((data.y != 0).float().mean()))


def test_evaluate_refuses_weights_that_do_not_fit_the_arch(small_mlp: Architecture) -> None:
    other = parse_arch({"name": "mlp", "widths": [64, 16, 10]})
    weights = {key: torch.zeros(shape) for key, shape in other.expected_shapes().items()}
    with pytest.raises(CheckpointMismatchError, match="do not fit the mlp arch"):
        evaluate(small_mlp, weights, digits("test"), device=CPU)


def test_a_diverging_run_is_stopped_with_a_sentence(
    small_mlp: Architecture, small_train: ArrayDataset
) -> None:
    poisoned = {key: torch.zeros(shape) for key, shape in small_mlp.expected_shapes().items()}
    poisoned["0.bias"][0] = math.inf
    with pytest.raises(InvalidParameterError, match="diverged in epoch 1"):
        train_mode(small_mlp, small_train, FAST, device=CPU, init_state=poisoned)


def test_a_streamed_synthetic_dataset_is_learnable(small_mlp: Architecture) -> None:
    train = SyntheticDataset(2048, (64,), 10, seed=0)
    test = SyntheticDataset(1024, (64,), 10, seed=0)
    state = train_mode(small_mlp, train, TrainConfig(epochs=3, batch_size=64, lr=0.1), device=CPU)
    _, error = evaluate(small_mlp, state, test, device=CPU)
    assert error < 0.1


class TinyBatchNormNet(Architecture):
    """Linear -> BatchNorm1d -> ReLU -> Linear, to train a net with BatchNorm buffers."""

    name: ClassVar[str] = "tiny_bn"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (64,)

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def has_batch_norm(self) -> bool:
        return True

    def build(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))

    def permutation_spec(self) -> PermutationSpec:
        return PermutationSpec(axes_to_perm={}, perm_to_features={})

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name}

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> "TinyBatchNormNet":
        return cls()


def test_batch_norm_nets_train_and_keep_their_running_statistics(
    digits_train: ArrayDataset,
) -> None:
    arch = TinyBatchNormNet()
    data = digits_train.limit(640)
    state = train_mode(arch, data, TrainConfig(epochs=3, batch_size=64, lr=0.1), device=CPU)
    assert int(state["1.num_batches_tracked"]) == 3 * 10
    assert float(state["1.running_mean"].abs().sum()) > 0.0
    _, error = evaluate(arch, state, digits("test"), device=CPU)
    assert error < 0.15


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", 1001),
        ("epochs", 2.0),
        ("seed", -1),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", math.nan),
        ("momentum", 1.0),
        ("weight_decay", -0.1),
        ("warmup_fraction", 1.5),
        ("spawn_epochs", 11),
        ("spawn_epochs", True),
    ],
)
def test_bad_training_parameters_are_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidParameterError, match=f"'{field}' must be"):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_epochs_outside_the_run_and_bad_mode_counts_are_refused(
    small_mlp: Architecture, small_train: ArrayDataset
) -> None:
    with pytest.raises(InvalidParameterError, match="not within a run of 4 epochs"):
        train_mode(small_mlp, small_train, FAST, device=CPU, start_epoch=3, end_epoch=5)
    with pytest.raises(InvalidParameterError, match="'num_modes' must be"):
        train_modes(small_mlp, small_train, FAST, num_modes=0, device=CPU)
    with pytest.raises(InvalidParameterError, match="beyond the largest seed"):
        train_modes(small_mlp, small_train, replace(FAST, seed=2**31 - 1), device=CPU)


@pytest.mark.skipif("resnet" not in ARCHITECTURES, reason="the resnet arch is not registered")
def test_a_small_resnet_learns_digits_reshaped_to_images(digits_train: ArrayDataset) -> None:
    arch = parse_arch(
        {"name": "resnet", "depth": 8, "width": 0.5, "in_channels": 1, "input_size": 8}
    )
    config = TrainConfig(epochs=2, batch_size=64, lr=0.1)
    state = train_mode(arch, digits_train, config, device=CPU)
    _, error = evaluate(arch, state, digits("test"), device=CPU)
    assert error < 0.10


def test_a_zoo_model_trains_with_its_own_training_branches() -> None:
    # timm's stochastic depth is Python code that reads the training flag: the zoo's graph,
    # traced in eval mode, has it fixed off, so training runs the library's model. With it on,
    # the run differs from one without; each is reproducible; the keys are the arch's.
    data = digits("train").limit(128)
    config = TrainConfig(epochs=1, batch_size=32, lr=3e-3, weight_decay=0.0, optimizer="adamw")
    runs = {}
    for rate in (0.0, 0.5, 0.5):
        kwargs = {**VIT_DIGITS["kwargs"], "drop_path_rate": rate}
        arch = parse_arch({**VIT_DIGITS, "kwargs": kwargs})
        (state,) = train_modes(arch, data, config, num_modes=1, device=torch.device("cpu"))
        assert list(state) == list(arch.expected_shapes())
        runs.setdefault(rate, []).append(state)
    (plain,), (stochastic, again) = runs[0.0], runs[0.5]
    key = "blocks.0.mlp.fc1.weight"
    assert torch.equal(stochastic[key], again[key])
    assert not torch.equal(plain[key], stochastic[key])


def test_a_model_with_auxiliary_classifiers_in_training_trains_on_its_main_logits() -> None:
    # torchvision's GoogLeNet returns (logits, aux2, aux1) in training; the arch's keys (its
    # eval-mode graph's) leave the auxiliary classifiers out.
    arch_json = {"name": "torchvision", "model": "googlenet", "kwargs": {"num_classes": 10}}
    arch = parse_arch({**arch_json, "input_shape": [3, 32, 32]})
    data = SyntheticDataset(16, (3, 32, 32), 10, seed=0)
    config = TrainConfig(epochs=1, batch_size=8)
    (state,) = train_modes(arch, data, config, num_modes=1, device=torch.device("cpu"))
    assert list(state) == list(arch.expected_shapes())
    assert not any(key.startswith("aux") for key in state)
