"""Model zoos by name: torchvision and timm models built without downloads, refused with a
sentence when unknown, and analysed end to end like the built-in archs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import timm
import torch
import torchvision
from torch import nn

from llfc_core.analysis import analyze_pair
from llfc_core.analysis.config import AnalysisConfig
from llfc_core.archs import parse_arch
from llfc_core.data import ArrayDataset, digits, fit_to_arch
from llfc_core.errors import ArchitectureError
from llfc_core.matching import match_models
from llfc_core.models import load_model
from llfc_core.training import TrainConfig, train_modes

CPU = torch.device("cpu")
RESNET18_DIGITS = {
    "name": "torchvision",
    "model": "resnet18",
    "kwargs": {"num_classes": 10},
    "input_shape": [3, 8, 8],
}


def test_checkpoint_keys_are_the_librarys_own_state_dict_keys() -> None:
    arch = parse_arch(RESNET18_DIGITS)
    library = torchvision.models.resnet18(num_classes=10).state_dict()
    assert arch.expected_shapes() == {key: tuple(value.shape) for key, value in library.items()}
    assert "layer2.0.downsample.0.weight" in library
    timm_arch = parse_arch(
        {"name": "timm", "model": "resnet18", "kwargs": {"in_chans": 1, "num_classes": 10}}
    )
    timm_keys = timm.create_model("resnet18", in_chans=1, num_classes=10).state_dict()
    assert set(timm_arch.expected_shapes()) == set(timm_keys)
    assert timm_arch.input_shape == (1, 224, 224)  # timm's own config, with in_chans
    assert timm_arch.num_classes == 10


def test_a_built_zoo_model_computes_what_the_library_model_does() -> None:
    arch = parse_arch(RESNET18_DIGITS)
    torch.manual_seed(0)
    library = torchvision.models.resnet18(num_classes=10).eval()
    model = load_model(arch, library.state_dict(), CPU)
    inputs = torch.randn(4, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(model(inputs), library(inputs))


@pytest.mark.parametrize(
    ("arch", "phrase"),
    [
        ({"name": "torchvision", "model": "resnet81"}, "Close matches: resnet18"),
        ({"name": "timm", "model": "convnext_atom"}, "Close matches: convnext_atto"),
        ({"name": "torchvision", "model": "resnet18", "kwargs": {"weights": "DEFAULT"}}, "weights"),
        ({"name": "timm", "model": "resnet18", "kwargs": {"pretrained": True}}, "downloaded"),
        ({"name": "torchvision", "model": "resnet18", "kwargs": {"colour": 1}}, "'colour'"),
        (
            {"name": "torchvision", "model": "resnet18", "kwargs": {"num_clases": 10}},
            "Close matches: num_classes",
        ),
        (
            {"name": "timm", "model": "resnet18", "kwargs": {"in_chan": 1}},
            "Close matches: in_chans",
        ),
        ({"name": "torchvision", "model": "resnet18", "kwargs": [1]}, "JSON object"),
        ({"name": "torchvision", "model": "resnet18", "input_shape": [3, 0, 8]}, "input_shape"),
        ({"name": "torchvision", "model": "resnet18", "shape": [3, 8, 8]}, "does not take"),
        ({"name": "torchvision", "model": "vgg11", "input_shape": [3, 2, 2]}, "cannot be built"),
    ],
)
def test_bad_zoo_archs_are_refused_with_a_sentence(arch: dict, phrase: str) -> None:
    with pytest.raises(ArchitectureError) as raised:
        parse_arch(arch)
    assert phrase in raised.value.message


def test_the_parameter_cap_is_checked_on_the_meta_device() -> None:
    huge = {"name": "torchvision", "model": "resnet18", "kwargs": {"num_classes": 10_000_000}}
    with pytest.raises(ArchitectureError, match="parameters, more than the limit"):
        parse_arch(huge, max_params=50_000_000)


def test_grayscale_examples_are_repeated_over_a_models_three_channels() -> None:
    arch = parse_arch(RESNET18_DIGITS)
    data = ArrayDataset(
        torch.arange(2 * 64, dtype=torch.float32).reshape(2, 64), torch.tensor([0, 1])
    )
    (x, _), *_ = list(fit_to_arch(arch, data).batches(2))
    assert x.shape == (2, 3, 8, 8)
    torch.testing.assert_close(x[:, 0], x[:, 2])
    torch.testing.assert_close(x[1, 1].flatten(), data.x[1])


@pytest.fixture(scope="module")
def resnet18_digit_modes() -> tuple:
    arch = parse_arch(RESNET18_DIGITS)
    state_a, state_b = train_modes(
        arch, digits("train"), TrainConfig(epochs=4, seed=0, lr=0.05), device=CPU
    )
    return arch, state_a, state_b


@pytest.mark.slow
def test_weight_matching_two_torchvision_resnet18_keeps_bs_function_and_lowers_the_barrier(
    resnet18_digit_modes: tuple,
) -> None:
    arch, state_a, state_b = resnet18_digit_modes
    match = match_models(arch, state_a, state_b, "weight", device=CPU)
    test_inputs = fit_to_arch(arch, digits("test").limit(64))
    (inputs, _), *_ = list(test_inputs.batches(64))
    with torch.inference_mode():
        original = load_model(arch, state_b, CPU)(inputs)
        permuted = load_model(arch, match.permuted_b, CPU)(inputs)
    torch.testing.assert_close(permuted, original, rtol=1e-4, atol=1e-4)
    assert match.weight_distance_after < match.weight_distance_before

    result = analyze_pair(
        arch,
        state_a,
        state_b,
        digits("test"),
        AnalysisConfig(match="weight"),
        train_dataset=digits("train"),
        device=CPU,
    ).to_json()
    naive, matched = result["pairs"]["naive"], result["pairs"]["matched"]
    assert result["endpoints"]["a"]["error"] < 0.2
    assert matched["lmc"]["loss_barrier"] < 0.75 * naive["lmc"]["loss_barrier"]
    layers = naive["weak_additivity_layers"]
    assert "layer1.0.relu" in layers and "layer1.0.relu#2" in layers


def test_a_gelu_convnext_is_measured_at_every_activation_and_block_output() -> None:
    arch = parse_arch(
        {
            "name": "timm",
            "model": "convnext_atto",
            "kwargs": {"num_classes": 10},
            "input_shape": [3, 32, 32],
        }
    )
    torch.manual_seed(0)
    state_a, state_b = arch.build().state_dict(), arch.build().state_dict()
    data = ArrayDataset(torch.randn(24, 3, 32, 32), torch.randint(0, 10, (24,)))
    result = analyze_pair(
        arch, state_a, state_b, data, AnalysisConfig(match="activation", batch_size=12), device=CPU
    ).to_json()
    naive = result["pairs"]["naive"]
    activations = naive["weak_additivity_layers"]
    # timm's GELU calls F.gelu(x, approximate=...): each call became an nn.GELU feature layer.
    # convnext_atto: stages of 2, 2, 6 and 2 blocks.
    assert len(activations) == 12 and all(name.endswith("mlp.act.gelu") for name in activations)
    assert all(0 < value < 1 for value in naive["weak_additivity"]["0.5"])
    layers = naive["llfc"]["layers"]
    assert layers[:2] == ["stages.0.blocks.0.mlp.act.gelu", "stages.0.blocks.0.add"]
    assert len(layers) == 12 + 12 + 1  # activations, block outputs, logits
    matching = result["matching"]
    assert matching["objective_after"] < matching["objective_before"]


def test_kwargs_that_would_build_a_million_blocks_are_refused_while_building() -> None:
    bomb = {"name": "timm", "model": "vit_tiny_patch16_224", "kwargs": {"depth": 1_000_000}}
    with pytest.raises(ArchitectureError, match="more than 10,000 modules"):
        parse_arch(bomb)
    # A big model of the zoo is well within the cap, and the guard is off outside building.
    assert parse_arch({"name": "torchvision", "model": "resnet152"}).num_params() > 60_000_000
    assert nn.Sequential(*[nn.Identity() for _ in range(10_001)])[0] is not None


def test_archs_derived_in_many_threads_at_once_are_all_right() -> None:
    # torch.fx patches nn.Module.__call__ for the whole process while it traces: without the
    # graph lock, an MLP checked in one thread ran into another thread's trace (a load test's
    # submissions were refused as "does not run on inputs of shape [64]").
    def derive(index: int) -> int:
        if index % 2:
            arch = parse_arch(
                {"name": "torchvision", "model": "resnet18", "kwargs": {"num_classes": 10 + index}}
            )
        else:
            arch = parse_arch({"name": "mlp", "widths": [64, 16 + index, 10]})
        return len(arch.permutation_spec().perm_names)

    with ThreadPoolExecutor(max_workers=8) as pool:
        counts = list(pool.map(derive, range(48)))
    assert counts == [1 if index % 2 == 0 else 12 for index in range(48)]
