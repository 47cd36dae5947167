"""Architectures: key layouts, permutation specs that really are symmetries, and parse errors."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from torch import nn

from llfc_core.archs import VGG, Architecture, ResNet, parse_arch
from llfc_core.errors import ArchitectureError
from llfc_core.permutation import (
    PermutationSpec,
    apply_permutation,
    perm_sizes,
    random_permutation,
)

SMALL_ARCHS: dict[str, dict[str, Any]] = {
    "mlp": {"name": "mlp", "widths": [64, 24, 16, 10]},
    "vgg11-bn-8x8": {"name": "vgg", "depth": 11, "width": 0.125, "in_channels": 1, "input_size": 8},
    "vgg11-bn-32x32": {"name": "vgg", "depth": 11, "width": 0.125},
    "vgg11-8x8": {
        "name": "vgg",
        "depth": 11,
        "width": 0.125,
        "batch_norm": False,
        "in_channels": 1,
        "input_size": 8,
    },
    "vgg11-32x32": {"name": "vgg", "depth": 11, "width": 0.125, "batch_norm": False},
    "resnet8-32x32": {"name": "resnet", "depth": 8},
    "resnet14-8x8": {"name": "resnet", "depth": 14, "in_channels": 1, "input_size": 8},
}


def randomised_model(arch: Architecture, seed: int) -> nn.Module:
    """A float64 model whose BatchNorm affine parameters and running statistics are all nonzero
    and distinct per channel, so a BatchNorm axis missing from a spec changes the outputs."""
    torch.manual_seed(seed)
    model = arch.build().double()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.weight.data = torch.rand(channels, dtype=torch.float64) + 0.5
            module.bias.data = torch.randn(channels, dtype=torch.float64)
            module.running_mean.copy_(torch.randn(channels, dtype=torch.float64))
            module.running_var.copy_(torch.rand(channels, dtype=torch.float64) + 0.5)
    return model.eval()


def outputs_and_features(
    model: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the output of every nn.ReLU module, by module name."""
    features: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(
            lambda _module, _inputs, output, name=name: features.__setitem__(name, output)
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.ReLU)
    ]
    with torch.no_grad():
        logits = model(x)
    for handle in handles:
        handle.remove()
    return logits, features


def permuted_model_outputs(
    arch: Architecture, spec: PermutationSpec, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a random model and of the same model permuted by ``spec``."""
    model = randomised_model(arch, seed)
    state = model.state_dict()
    perm = random_permutation(spec, state, seed=seed + 1)
    permuted = arch.build().double().eval()
    permuted.load_state_dict(apply_permutation(spec, perm, state))
    x = torch.randn(5, *arch.input_shape, dtype=torch.float64)
    with torch.no_grad():
        return model(x), permuted(x)


@pytest.mark.parametrize("spec", SMALL_ARCHS.values(), ids=SMALL_ARCHS.keys())
def test_random_permutation_leaves_outputs_unchanged_and_permutes_features(
    spec: dict[str, Any],
) -> None:
    arch = parse_arch(spec)
    perm_spec = arch.permutation_spec()
    model = randomised_model(arch, seed=0)
    state = model.state_dict()
    perm = random_permutation(perm_spec, state, seed=1)
    permuted_state = apply_permutation(perm_spec, perm, state)
    assert any(not torch.equal(state[k], permuted_state[k]) for k in state)

    permuted = arch.build().double().eval()
    permuted.load_state_dict(permuted_state)
    x = torch.randn(5, *arch.input_shape, dtype=torch.float64)
    logits, features = outputs_and_features(model, x)
    permuted_logits, permuted_features = outputs_and_features(permuted, x)

    assert logits.abs().max() > 1e-3
    torch.testing.assert_close(permuted_logits, logits, atol=1e-5, rtol=0)
    # Unit i of the permuted model is unit perm[name][i] of the original, on every feature map.
    for perm_name, module_names in perm_spec.perm_to_features.items():
        for module_name in module_names:
            expected = features[module_name].index_select(1, perm[perm_name])
            torch.testing.assert_close(permuted_features[module_name], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("missing", ["layer1.0.bn2.running_mean", "layer2.0.shortcut.1.weight"])
def test_a_spec_missing_one_batch_norm_axis_changes_the_outputs(missing: str) -> None:
    arch = parse_arch(SMALL_ARCHS["resnet8-32x32"])
    full = arch.permutation_spec()
    broken_axes = {key: axes for key, axes in full.axes_to_perm.items() if key != missing}
    broken = PermutationSpec(broken_axes, full.perm_to_features, full.statistics_keys)
    logits, permuted_logits = permuted_model_outputs(arch, broken)
    assert (logits - permuted_logits).abs().max() > 1e-3


def first_and_last_layers(model: nn.Module) -> tuple[str, str]:
    """Names of the first conv/linear module (reads the input) and the last one (the logits)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    return names[0], names[-1]


@pytest.mark.parametrize("spec", SMALL_ARCHS.values(), ids=SMALL_ARCHS.keys())
def test_every_hidden_axis_of_every_tensor_is_permuted(spec: dict[str, Any]) -> None:
    arch = parse_arch(spec)
    perm_spec = arch.permutation_spec()
    model = arch.build()
    state = model.state_dict()
    first, last = first_and_last_layers(model)
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked"):
            assert perm_spec.axes_to_perm.get(key, ()) == ()
            continue
        axes = perm_spec.axes_to_perm[key]
        assert len(axes) == tensor.ndim, key
        module = key.rsplit(".", 1)[0]
        for axis, perm_name in enumerate(axes):
            reads_input = module == first and axis == 1
            writes_logits = module == last and axis == 0
            spatial = tensor.ndim == 4 and axis >= 2
            assert (perm_name is None) == (reads_input or writes_logits or spatial), (key, axis)
    assert set(perm_spec.axes_to_perm) <= set(state)
    sizes = perm_sizes(perm_spec, state)
    for perm_name, axes_list in perm_spec.perm_to_axes.items():
        assert {state[key].shape[axis] for key, axis in axes_list} == {sizes[perm_name]}


@pytest.mark.parametrize("spec", SMALL_ARCHS.values(), ids=SMALL_ARCHS.keys())
def test_feature_modules_are_distinct_relus_each_run_once(spec: dict[str, Any]) -> None:
    arch = parse_arch(spec)
    perm_spec = arch.permutation_spec()
    model = arch.build().eval()
    modules = dict(model.named_modules())
    relu_names = [name for name, module in modules.items() if isinstance(module, nn.ReLU)]
    feature_names = [name for names in perm_spec.perm_to_features.values() for name in names]
    assert sorted(feature_names) == sorted(relu_names)
    assert len({id(modules[name]) for name in relu_names}) == len(relu_names)
    assert set(perm_spec.perm_to_features) == set(perm_spec.perm_to_axes)

    calls: list[str] = []
    for name in relu_names:
        modules[name].register_forward_hook(lambda *_args, name=name: calls.append(name))
    with torch.no_grad():
        model(torch.randn(2, *arch.input_shape))
    assert calls == relu_names


@pytest.mark.parametrize("spec", SMALL_ARCHS.values(), ids=SMALL_ARCHS.keys())
def test_statistics_keys_are_exactly_the_running_statistics(spec: dict[str, Any]) -> None:
    arch = parse_arch(spec)
    state = arch.build().state_dict()
    running = {k for k in state if k.endswith(("running_mean", "running_var"))}
    assert arch.permutation_spec().statistics_keys == running
    assert arch.has_batch_norm == bool(running)


@pytest.mark.parametrize(
    "spec",
    [*SMALL_ARCHS.values(), {"name": "vgg"}, {"name": "vgg", "depth": 13}, {"name": "resnet"}],
)
def test_expected_shapes_match_a_built_model(spec: dict[str, Any]) -> None:
    arch = parse_arch(spec)
    state = arch.build().state_dict()
    assert arch.expected_shapes() == {key: tuple(value.shape) for key, value in state.items()}
    assert list(arch.expected_shapes()) == list(state)


def test_vgg_keys_follow_torchvision_layout() -> None:
    with_bn = parse_arch({"name": "vgg", "depth": 11}).expected_shapes()
    assert with_bn["features.0.weight"] == (64, 3, 3, 3)
    assert with_bn["features.1.running_var"] == (64,)
    assert with_bn["features.1.num_batches_tracked"] == ()
    assert with_bn["features.4.weight"] == (128, 64, 3, 3)
    assert with_bn["features.25.weight"] == (512, 512, 3, 3)
    assert with_bn["classifier.weight"] == (10, 512)
    assert with_bn["classifier.bias"] == (10,)
    plain = parse_arch({"name": "vgg", "depth": 11, "batch_norm": False}).expected_shapes()
    assert [k for k in plain if k.endswith("weight")][:3] == [
        "features.0.weight",
        "features.3.weight",
        "features.6.weight",
    ]
    vgg16 = parse_arch({"name": "vgg"})
    assert len([k for k in vgg16.expected_shapes() if k.endswith("running_mean")]) == 13
    assert vgg16.num_params() == 14_728_266


def test_vgg_on_8x8_replaces_late_pools_by_identity_and_keeps_keys() -> None:
    small = VGG(depth=11, width=0.125, in_channels=1, input_size=8)
    model = small.build()
    assert isinstance(model.features, nn.Sequential)
    slots = [m for m in model.features if isinstance(m, nn.MaxPool2d | nn.Identity)]
    assert [type(m) for m in slots] == [nn.MaxPool2d] * 3 + [nn.Identity] * 2
    large = VGG(depth=11, width=0.125, in_channels=1, input_size=32)
    assert list(small.expected_shapes()) == list(large.expected_shapes())
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_vgg_width_scales_every_conv() -> None:
    assert VGG(depth=11, width=0.5).channels() == [32, 64, 128, 128, 256, 256, 256, 256]
    assert VGG(depth=11, width=2).expected_shapes()["classifier.weight"] == (10, 1024)


def test_resnet_keys_follow_kuangliu_layout() -> None:
    shapes = parse_arch({"name": "resnet", "depth": 20, "num_classes": 100}).expected_shapes()
    assert shapes["conv1.weight"] == (16, 3, 3, 3)
    assert shapes["bn1.running_mean"] == (16,)
    assert shapes["layer1.2.conv2.weight"] == (16, 16, 3, 3)
    assert "layer1.0.shortcut.0.weight" not in shapes
    assert "layer2.1.shortcut.0.weight" not in shapes
    assert shapes["layer2.0.conv1.weight"] == (32, 16, 3, 3)
    assert shapes["layer2.0.shortcut.0.weight"] == (32, 16, 1, 1)
    assert shapes["layer3.0.shortcut.1.running_var"] == (64,)
    assert shapes["linear.weight"] == (100, 64)
    assert not any(key.endswith("conv1.bias") for key in shapes)
    assert parse_arch({"name": "resnet"}).num_params() == 272_474


def test_resnet_residual_stream_shares_one_permutation_per_stage() -> None:
    # A permutation is named after the first layer whose outputs it reorders: the stem for
    # stage 1's stream, a stage's first conv2 for its stream, conv1 inside a block.
    spec = ResNet(depth=14, width=2).permutation_spec()
    stage1 = {key for key, _ in spec.perm_to_axes["P_conv1"]}
    writers_and_readers = {"conv1.weight", "bn1.running_var", "layer1.1.conv2.weight"}
    assert writers_and_readers | {"layer2.0.conv1.weight"} <= stage1
    stage2, stage3 = "P_layer2.0.conv2", "P_layer3.0.conv2"
    assert spec.axes_to_perm["layer2.0.shortcut.0.weight"] == (stage2, "P_conv1", None, None)
    assert spec.axes_to_perm["layer3.1.conv1.weight"] == ("P_layer3.1.conv1", stage3, None, None)
    assert spec.axes_to_perm["linear.weight"] == (None, stage3)
    assert spec.perm_to_features["P_conv1"] == ("relu", "layer1.0.relu2", "layer1.1.relu2")
    assert spec.perm_to_features["P_layer2.1.conv1"] == ("layer2.1.relu1",)
    assert len(spec.perm_names) == 3 + 3 * 2


def test_resnet_with_unequal_stem_and_stage_widths_is_still_a_symmetry() -> None:
    # width 1/16 gives 1, 2, 4 channels: a projection shortcut only where stride or width changes.
    arch = ResNet(depth=8, width=1 / 16, input_size=8)
    assert "layer1.0.shortcut.0.weight" not in arch.expected_shapes()
    logits, permuted_logits = permuted_model_outputs(arch, arch.permutation_spec())
    torch.testing.assert_close(permuted_logits, logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "vgg", "depth": 11},
        {"name": "vgg", "depth": 13, "width": 0.25, "batch_norm": False, "input_size": 16},
        {"name": "resnet", "depth": 32, "width": 2, "in_channels": 1, "input_size": 8},
    ],
)
def test_to_json_fills_defaults_and_parses_back_to_the_same_arch(spec: dict[str, Any]) -> None:
    arch = parse_arch(spec)
    canonical = arch.to_json()
    assert set(spec.items()) <= set(canonical.items())
    assert parse_arch(canonical) == arch


def test_defaults_are_vgg16_bn_and_resnet20_on_cifar() -> None:
    assert parse_arch({"name": "vgg"}).to_json() == {
        "name": "vgg",
        "depth": 16,
        "width": 1.0,
        "batch_norm": True,
        "in_channels": 3,
        "input_size": 32,
        "num_classes": 10,
    }
    resnet = parse_arch({"name": "resnet"})
    assert isinstance(resnet, ResNet)
    assert (resnet.input_shape, resnet.num_classes, resnet.blocks_per_stage) == ((3, 32, 32), 10, 3)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"name": "vggnet"}, "Unknown arch name 'vggnet'"),
        ({"name": "vgg", "depth": 12}, "must be one of 11, 13, 16"),
        ({"name": "vgg", "depth": 19}, "'depth' must be an integer from 11 to 16"),
        ({"name": "vgg", "width": 0}, "'width' must be a number"),
        ({"name": "vgg", "batch_norm": "yes"}, "'batch_norm' must be true or false"),
        ({"name": "vgg", "dropout": 0.5}, "does not take 'dropout'"),
        ({"name": "vgg", "input_size": 0}, "'input_size' must be an integer"),
        ({"name": "resnet", "depth": 12}, "must be 6n+2"),
        ({"name": "resnet", "depth": 20.0}, "'depth' must be an integer"),
        ({"name": "resnet", "blocks": 3}, "does not take 'blocks'"),
        ({"name": "resnet", "num_classes": 0}, "'num_classes' must be an integer"),
    ],
)
def test_bad_arch_fields_raise_architecture_error_with_a_sentence(
    spec: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ArchitectureError) as caught:
        parse_arch(spec)
    assert fragment in caught.value.message
    assert caught.value.message.endswith(".")


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_absurd_width_is_refused_before_anything_is_allocated(name: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ArchitectureError, match="'width' must be a number"):
        parse_arch({"name": name, "width": 1e9})
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("spec", [{"name": "vgg", "width": 16}, {"name": "resnet", "width": 64}])
def test_allowed_but_too_large_width_hits_the_parameter_limit(spec: dict[str, Any]) -> None:
    with pytest.raises(ArchitectureError, match="more than the limit"):
        parse_arch(spec)


def test_an_arch_without_a_name_is_told_to_give_one() -> None:
    with pytest.raises(ArchitectureError, match="The arch needs a 'name'; known archs are"):
        parse_arch({})
