"""Permutation specs derived from the graph: proved on real model zoos, fail-closed on unknown
ops, and equal to what the built-in archs' hand-derived layouts say."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import timm
import torch
import torchvision
from torch import nn

from llfc_core.errors import SymmetryProofError
from llfc_core.permutation import PermutationSpec
from llfc_core.symmetry import PROOF_TOLERANCE, check_proof, derive_symmetry, prove_symmetry
from llfc_core.symmetry.derive import OUTPUT_REASON, instrument

INPUT_SHAPE = (3, 32, 32)


def torchvision_model(name: str) -> Callable[[], nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None, num_classes=10)


def timm_model(name: str) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=10)


ZOO: dict[str, Callable[[], nn.Module]] = {
    "torchvision/resnet18": torchvision_model("resnet18"),
    "torchvision/vgg11_bn": torchvision_model("vgg11_bn"),
    "torchvision/mobilenet_v3_small": torchvision_model("mobilenet_v3_small"),
    "torchvision/densenet121": torchvision_model("densenet121"),
    "torchvision/convnext_tiny": torchvision_model("convnext_tiny"),
    "torchvision/efficientnet_b0": torchvision_model("efficientnet_b0"),
    "torchvision/regnet_x_400mf": torchvision_model("regnet_x_400mf"),
    "timm/resnet18": timm_model("resnet18"),
    "timm/convnext_atto": timm_model("convnext_atto"),
    "timm/wide_resnet50_2": timm_model("wide_resnet50_2"),
}
GROUPED_CONVOLUTION = "a grouped convolution"
"""The one rule besides the logits that leaves hidden units in place in this list (RegNet)."""


def randomised(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with BatchNorm affine parameters and statistics that differ per
    channel, so an unpermuted BatchNorm axis changes the outputs."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_()
    return model.eval()


def classifier_keys(model: nn.Module) -> set[str]:
    """The weight and bias of the last Linear: the logits."""
    last = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1]
    return {f"{last}.weight", f"{last}.bias"}


@pytest.mark.parametrize("name", ZOO, ids=ZOO)
def test_derived_spec_of_a_zoo_model_is_proved_and_leaves_only_what_the_rules_say(
    name: str,
) -> None:
    model = randomised(ZOO[name]())
    derived = derive_symmetry(model, INPUT_SHAPE)
    inputs = torch.randn(4, *INPUT_SHAPE)

    assert len(derived.spec.perm_names) >= 5
    for seed in (0, 1):
        assert prove_symmetry(model, derived.spec, inputs, seed=seed) < PROOF_TOLERANCE
    logits_axes = {
        (axis.key, axis.axis) for axis in derived.unpermuted if axis.reason == OUTPUT_REASON
    }
    assert logits_axes == {(key, 0) for key in classifier_keys(model)}
    others = [axis for axis in derived.unpermuted if axis.reason != OUTPUT_REASON]
    if name == "torchvision/regnet_x_400mf":
        assert others and all(GROUPED_CONVOLUTION in axis.reason for axis in others)
    else:
        assert others == []
    # Every unit axis of the convolutions and Linears is permuted, save those listed and the
    # input's channels (a grouped convolution's axis 1 holds channels within a group: no units).
    listed = {(axis.key, axis.axis) for axis in derived.unpermuted}
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            key = f"{path}.weight"
            assert (derived.spec.axes_to_perm[key][0] is None) == ((key, 0) in listed), key
            whole_input = isinstance(module, nn.Linear) or module.groups == 1
            reads_input = module.weight.shape[1] == INPUT_SHAPE[0]
            if whole_input and not reads_input and (key, 1) not in listed:
                assert derived.spec.axes_to_perm[key][1] is not None, key


def test_resnet18_has_one_permutation_per_stage_stream_and_per_block_inside() -> None:
    for factory in (ZOO["torchvision/resnet18"], ZOO["timm/resnet18"]):
        derived = derive_symmetry(factory(), INPUT_SHAPE)
        # 4 residual streams (the stem's, then each stage's from its downsample) + 8 blocks.
        assert len(derived.spec.perm_names) == 12
        streams = [
            name for name in derived.spec.perm_names if len(derived.spec.perm_to_uses[name]) > 12
        ]
        assert len(streams) == 4


def test_a_module_called_twice_gives_two_feature_layers_and_computes_the_same() -> None:
    model = ZOO["torchvision/resnet18"]().eval()
    derived = derive_symmetry(model, INPUT_SHAPE)
    names = [site.name for site in derived.feature_sites]
    assert names[:4] == ["relu", "layer1.0.relu", "layer1.0.add", "layer1.0.relu#2"]
    instrumented = copy.deepcopy(derived.traced)
    instrument(instrumented, derived.feature_sites)
    modules = dict(instrumented.named_modules())
    assert isinstance(modules["layer1.0.relu#2"], nn.ReLU)
    assert modules["layer1.0.relu#2"] is not modules["layer1.0.relu"]
    inputs = torch.randn(2, *INPUT_SHAPE)
    with torch.inference_mode():
        torch.testing.assert_close(instrumented(inputs), model(inputs), rtol=0, atol=0)


def test_concatenation_and_flatten_make_composite_axes() -> None:
    densenet = derive_symmetry(ZOO["torchvision/densenet121"](), INPUT_SHAPE)
    transition = densenet.spec.axes_to_perm["features.transition1.conv.weight"][1]
    assert transition in densenet.spec.composites
    assert len(densenet.spec.composites[transition]) == 1 + 6  # the stem's output, 6 dense layers

    vgg = derive_symmetry(ZOO["torchvision/vgg11_bn"](), INPUT_SHAPE)
    flattened = vgg.spec.axes_to_perm["classifier.0.weight"][1]
    assert flattened is not None
    (segment,) = vgg.spec.composites[flattened]
    assert (segment.units, segment.block) == (512, 7 * 7)


class RollsChannels(nn.Module):
    """An MLP-like conv net whose middle op (torch.roll over channels) no rule knows."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 8, 3, padding=1)
        self.third = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.first(x))
        x = torch.roll(torch.relu(self.second(x)), shifts=1, dims=1)
        x = torch.relu(self.third(x))
        return self.head(x.mean(dim=(2, 3)))


def test_an_unknown_op_leaves_what_it_touches_unpermuted_and_says_which_op() -> None:
    model = RollsChannels().eval()
    derived = derive_symmetry(model, (3, 6, 6))
    assert derived.spec.axes_to_perm["second.weight"][0] is None
    assert derived.spec.axes_to_perm["third.weight"][1] is None
    assert derived.spec.axes_to_perm["first.weight"][0] is not None
    assert derived.spec.axes_to_perm["third.weight"][0] is not None
    reasons = {axis.key: axis.reason for axis in derived.unpermuted}
    assert "roll" in reasons["second.weight"] and "do not know" in reasons["second.weight"]
    assert prove_symmetry(model, derived.spec, torch.randn(3, 3, 6, 6)) < PROOF_TOLERANCE


def test_a_wrong_spec_fails_its_proof_naming_the_permutation_that_broke_the_function() -> None:
    model = randomised(ZOO["torchvision/resnet18"]())
    spec = derive_symmetry(model, INPUT_SHAPE).spec
    axes = dict(spec.axes_to_perm)
    axes["layer2.0.bn1.running_var"] = (None,)
    broken = PermutationSpec(axes, spec.perm_to_features, spec.statistics_keys, spec.composites)
    inputs = torch.randn(4, *INPUT_SHAPE)
    with pytest.raises(SymmetryProofError) as raised:
        check_proof(model, broken, inputs)
    owner = spec.axes_to_perm["layer2.0.bn1.running_var"][0]
    assert owner is not None and owner in raised.value.message
    assert check_proof(model, spec, inputs) < PROOF_TOLERANCE


class NormsAndAttention(nn.Module):
    """GroupNorm with one group, one group per channel and four groups; then attention."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.whole = nn.GroupNorm(1, 8)
        self.middle = nn.Conv2d(8, 8, 3, padding=1)
        self.per_channel = nn.GroupNorm(8, 8)
        self.grouped = nn.Conv2d(8, 8, 1)
        self.four = nn.GroupNorm(4, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.whole(self.stem(x)))
        x = torch.relu(self.per_channel(self.middle(x)))
        x = torch.relu(self.four(self.grouped(x)))
        tokens = x.flatten(2).transpose(1, 2)
        attended, _ = self.attention(tokens, tokens, tokens)
        return self.head(attended.mean(dim=1))


def test_group_norm_keeps_its_channels_free_only_with_one_group_or_one_per_channel() -> None:
    model = NormsAndAttention().eval()
    derived = derive_symmetry(model, (3, 4, 4))
    axes = derived.spec.axes_to_perm
    assert axes["stem.weight"][0] is not None and axes["whole.weight"] == (axes["stem.weight"][0],)
    assert axes["middle.weight"][0] is not None
    assert axes["per_channel.bias"] == (axes["middle.weight"][0],)
    # Four groups of two channels: a permutation could move a channel into another group.
    assert axes["grouped.weight"][0] is None and axes["four.weight"] == (None,)
    reasons = {axis.key: axis.reason for axis in derived.unpermuted}
    assert "GroupNorm with 4 groups" in reasons["grouped.weight"]
    # The attention reads those channels, in place, while its heads and outputs move.
    assert axes["attention.in_proj_weight"][1] is None
    assert derived.spec.nested["P_attention[16:24]"].head_order == "H_attention[0:8]"
    assert axes["attention.out_proj.weight"] == ("P_attention.out_proj", "P_attention[16:24]")
    assert prove_symmetry(model, derived.spec, torch.randn(3, 3, 4, 4)) < PROOF_TOLERANCE
