"""Where a job's examples live: on the device once when they fit in its share of the free
memory, streamed batch by batch otherwise, and the numbers the same either way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.data import ArrayDataset, ReshapedDataset, digits, token_dataset
from llfc_core.matching.weight import summed_on_device, summed_on_host
from llfc_core.placement import (
    DEVICE_DATA_FRACTION,
    StreamedDataset,
    is_on,
    place_dataset,
    placement_for,
)
from llfc_core.training import TrainConfig, evaluate, train_mode

CPU = torch.device("cpu")
# A device with no memory behind it: placement's decisions are visible, no GPU needed.
META = torch.device("meta")


def _arrays(examples: int = 100) -> ArrayDataset:
    return ArrayDataset(torch.randn(examples, 64), torch.arange(examples) % 10, "arrays")


def test_data_fits_up_to_its_share_of_the_free_memory() -> None:
    free = 4_000_000
    limit = int(DEVICE_DATA_FRACTION * free)
    assert placement_for(limit, free) == "device"
    assert placement_for(limit + 1, free) == "streamed"
    assert placement_for(1, 0) == "streamed"


def test_arrays_that_fit_are_copied_to_the_device_once() -> None:
    arrays = _arrays()
    needed = arrays.x.nbytes + arrays.y.nbytes
    placed = place_dataset(arrays, META, free_bytes=int(needed / DEVICE_DATA_FRACTION))
    assert isinstance(placed, ArrayDataset)
    assert placed.x.device == META and placed.y.device == META
    assert placed.name == "arrays" and placed.x.shape == arrays.x.shape
    # Already there: nothing moves again.
    assert place_dataset(placed, META, free_bytes=0) is placed


def test_arrays_that_do_not_fit_are_streamed() -> None:
    arrays = _arrays()
    needed = arrays.x.nbytes + arrays.y.nbytes
    placed = place_dataset(arrays, META, free_bytes=int(needed / DEVICE_DATA_FRACTION) - 1)
    assert isinstance(placed, StreamedDataset) and placed.base is arrays
    x, y = next(placed.batches(30))
    assert x.device == META and y.device == META and x.shape == (30, 64)
    assert place_dataset(placed, META, free_bytes=0) is placed


def test_token_targets_count_once_against_the_budget() -> None:
    tokens = token_dataset(torch.randint(0, 16, (50, 8)))
    placed = place_dataset(tokens, META, free_bytes=int(tokens.x.nbytes / DEVICE_DATA_FRACTION))
    assert isinstance(placed, ArrayDataset) and placed.y is placed.x


def test_reshaped_arrays_keep_their_shape_on_the_device() -> None:
    reshaped = ReshapedDataset(_arrays(), (3, 8, 8), channels=3)
    placed = place_dataset(reshaped, META, free_bytes=10**9)
    assert isinstance(placed, ReshapedDataset) and placed.channels == 3
    assert isinstance(placed.base, ArrayDataset) and placed.base.x.device == META
    x, _ = next(placed.batches(4))
    assert x.shape == (4, 3, 8, 8)


def test_on_the_cpu_nothing_moves() -> None:
    arrays = _arrays()
    assert place_dataset(arrays, CPU, free_bytes=0) is arrays


def test_streamed_batches_are_the_same_batches_in_the_same_order() -> None:
    arrays = _arrays(103)
    streamed = StreamedDataset(arrays, CPU)
    for (x, y), (sx, sy) in zip(arrays.batches(10), streamed.batches(10), strict=True):
        assert torch.equal(x, sx) and torch.equal(y, sy)
    shuffled = zip(
        arrays.shuffled_batches(10, torch.Generator().manual_seed(3)),
        streamed.shuffled_batches(10, torch.Generator().manual_seed(3)),
        strict=True,
    )
    for (x, y), (sx, sy) in shuffled:
        assert torch.equal(x, sx) and torch.equal(y, sy)
    assert streamed.num_batches(10) == 11 and streamed.limit(5).num_examples == 5


@pytest.mark.parametrize(
    "arch_json",
    [
        {"name": "mlp", "widths": [64, 32, 24, 10]},
        {"name": "vgg", "depth": 11, "width": 0.125, "in_channels": 1, "input_size": 8},
    ],
)
def test_an_analysis_of_streamed_data_is_bit_identical(arch_json: dict) -> None:
    arch = parse_arch(arch_json)
    torch.manual_seed(0)
    state_a, state_b = arch.build().state_dict(), arch.build().state_dict()
    test, train = digits("test").limit(120), digits("train").limit(200)
    config = AnalysisConfig(match="activation", batch_size=50)

    def analysed(wrap: bool) -> dict:
        data = StreamedDataset(test, CPU) if wrap else test
        side = StreamedDataset(train, CPU) if wrap else train
        result = analyze_pair(
            arch, state_a, state_b, data, config, train_dataset=side, device=CPU
        ).to_json()
        result.pop("timings", None)
        return result

    assert analysed(wrap=True) == analysed(wrap=False)


def test_training_and_evaluation_of_streamed_data_are_bit_identical() -> None:
    arch = parse_arch({"name": "mlp", "widths": [64, 16, 10]})
    train = digits("train").limit(256)
    config = TrainConfig(epochs=2, batch_size=64)
    plain = train_mode(arch, train, config, device=CPU)
    streamed = train_mode(arch, StreamedDataset(train, CPU), config, device=CPU)
    assert all(torch.equal(plain[key], streamed[key]) for key in plain)
    assert evaluate(arch, plain, train, device=CPU) == evaluate(
        arch, plain, StreamedDataset(train, CPU), device=CPU
    )


def test_cost_terms_summed_on_the_device_equal_numpys_sum_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(0)
    terms = [torch.randn(37, 37, generator=generator) * 10**k for k in range(-3, 4)]
    reference = terms[0].numpy().astype(np.float64)
    for term in terms[1:]:
        reference = reference + term.numpy().astype(np.float64)
    on_host = summed_on_host(terms)
    on_device = summed_on_device(terms).numpy()
    assert on_host.dtype == on_device.dtype == np.float64
    assert np.array_equal(on_host, reference) and np.array_equal(on_device, reference)


def test_a_tensor_on_the_numbered_gpu_is_on_the_bare_cuda_device() -> None:
    assert is_on(torch.device("cuda", 0), torch.device("cuda"))
    assert is_on(torch.device("cuda", 1), torch.device("cuda", 1))
    assert not is_on(torch.device("cuda", 1), torch.device("cuda", 0))
    assert not is_on(torch.device("cpu"), torch.device("cuda"))
