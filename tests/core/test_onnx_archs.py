"""The arch {"name": "onnx"}: a lab's own nn.Module, exported to one .onnx file, becomes an arch
(the graph, weights stripped) and a state dict (the weights, keyed by initializer names) that
weight matching, activation matching and the whole analysis take like any built-in arch."""

from __future__ import annotations

import onnx
import pytest
import torch
from support.onnx_models import DigitsCNN, DigitsMLP, training_mode_export
from torch import nn

from llfc_core.analysis import analyze_pair
from llfc_core.analysis.config import AnalysisConfig
from llfc_core.archs import OnnxArchitecture, onnx_architecture_from_file, parse_arch
from llfc_core.data import digits
from llfc_core.errors import ArchitectureError, OnnxModelError
from llfc_core.matching import match_models
from llfc_core.models import load_model
from llfc_core.onnx_import.building import is_stripped

CPU = torch.device("cpu")
MAX_BYTES = 10_000_000
ALPHAS = (0.0, 0.5, 1.0)


CNN_TRAIN_EXAMPLES = 640
"""Fewer for the CNN, whose BatchNorm is slow on small CPUs."""
EPOCHS = 6


def trained(
    model_class: type[nn.Module], input_shape: tuple[int, ...], seed: int, examples: int | None
) -> nn.Module:
    """A few epochs of SGD on digits from a seeded initialisation: distinct modes, trained well
    enough that matching them lowers the barrier, with nonzero BN statistics, whatever ran
    before."""
    torch.manual_seed(seed)
    model = model_class()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(EPOCHS):
        for inputs, labels in digits("train").limit(examples).batches(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs.reshape(-1, *input_shape)), labels)
            loss.backward()
            optimizer.step()
    return model


def exported_pair(
    model_class: type[nn.Module], input_shape: tuple[int, ...], examples: int | None = None
) -> tuple[list[nn.Module], list[bytes]]:
    models = [trained(model_class, input_shape, seed, examples) for seed in (0, 1)]
    return models, [training_mode_export(model, input_shape) for model in models]


@pytest.fixture(scope="module")
def mlp_exports() -> tuple[list[nn.Module], list[bytes]]:
    return exported_pair(DigitsMLP, (64,))


@pytest.fixture(scope="module")
def cnn_exports() -> tuple[list[nn.Module], list[bytes]]:
    return exported_pair(DigitsCNN, (1, 8, 8), CNN_TRAIN_EXAMPLES)


def test_an_export_becomes_an_arch_and_the_state_dict_of_its_initializers(
    mlp_exports: tuple[list[nn.Module], list[bytes]],
) -> None:
    (model, _), (file_a, file_b) = mlp_exports
    arch, state = onnx_architecture_from_file(file_a, MAX_BYTES)
    arch_b, _ = onnx_architecture_from_file(file_b, MAX_BYTES)
    assert arch == arch_b and arch.to_json() == arch_b.to_json()  # two seeds, one graph
    assert arch.to_json() == {"name": "onnx", "graph_sha256": arch.graph_sha256}
    assert (arch.input_shape, arch.num_classes, arch.has_batch_norm) == ((64,), 10, False)
    assert list(state) == list(model.state_dict())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(state[key], value)
    # The graph keeps no weights: every layer's initializer is stripped of its values.
    graph = onnx.load_model_from_string(arch.graph)
    assert all(is_stripped(tensor) for tensor in graph.graph.initializer)
    assert len(arch.graph) < len(file_a) // 10
    inputs = torch.rand(5, 64)
    with torch.inference_mode():
        torch.testing.assert_close(load_model(arch, state, CPU)(inputs), model.eval()(inputs))


def test_the_arch_is_rebuilt_from_its_stored_graph_and_never_from_json_alone(
    mlp_exports: tuple[list[nn.Module], list[bytes]],
) -> None:
    arch, _ = onnx_architecture_from_file(mlp_exports[1][0], MAX_BYTES)
    rebuilt = parse_arch({"name": "onnx"}, onnx_graph=arch.graph)
    assert isinstance(rebuilt, OnnxArchitecture) and rebuilt == arch
    assert parse_arch(arch.to_json(), onnx_graph=arch.graph) == arch
    with pytest.raises(ArchitectureError, match=r"upload the file with it as a checkpoint"):
        parse_arch({"name": "onnx"})
    with pytest.raises(ArchitectureError, match=r"not that of the uploaded ONNX graph"):
        parse_arch({"name": "onnx", "graph_sha256": "0" * 64}, onnx_graph=arch.graph)
    with pytest.raises(ArchitectureError, match=r"does not take 'widths'"):
        parse_arch({"name": "onnx", "widths": [64, 10]}, onnx_graph=arch.graph)
    # Built afresh, the layers have torch's initialisation, not the stripped zeros.
    fresh = arch.build()
    assert fresh.get_submodule("fc1").weight.abs().sum() > 0
    with torch.device("meta"):
        assert all(tensor.is_meta for tensor in arch.build().state_dict().values())
    assert arch.expected_shapes()["fc2.weight"] == (32, 32)


def test_a_file_that_is_no_onnx_model_is_refused_with_a_sentence() -> None:
    with pytest.raises(OnnxModelError, match="not an ONNX model"):
        onnx_architecture_from_file(b"\x00not a protobuf at all\xff" * 4, MAX_BYTES)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["weight", "activation"])
def test_an_exported_class_style_mlp_is_analysed_with_matching(
    mlp_exports: tuple[list[nn.Module], list[bytes]], method: str
) -> None:
    (arch, state_a), (_, state_b) = (
        onnx_architecture_from_file(file, MAX_BYTES) for file in mlp_exports[1]
    )
    assert set(arch.symmetry().sizes) == {"P_fc1", "P_fc2"}
    match = match_models(arch, state_a, state_b, method, digits("train"), device=CPU)
    assert match.weight_distance_after < match.weight_distance_before
    result = analyze_pair(
        arch,
        state_a,
        state_b,
        digits("test"),
        AnalysisConfig(match=method, alphas=ALPHAS, llfc_alphas=(0.5,)),
        train_dataset=digits("train"),
        device=CPU,
    ).to_json()
    naive, matched = result["pairs"]["naive"], result["pairs"]["matched"]
    assert result["endpoints"]["a"]["error"] < 0.5  # trained: chance is 0.9
    assert matched["lmc"]["loss_barrier"] < naive["lmc"]["loss_barrier"]
    # Each call of the one ReLU module is its own feature layer.
    assert list(naive["weak_additivity_layers"]) == ["relu_0", "relu_1"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["weight", "activation"])
def test_a_cnn_exported_in_training_mode_keeps_batch_norm_through_the_analysis(
    cnn_exports: tuple[list[nn.Module], list[bytes]], method: str
) -> None:
    (arch, state_a), (_, state_b) = (
        onnx_architecture_from_file(file, MAX_BYTES) for file in cnn_exports[1]
    )
    assert arch.has_batch_norm and arch.input_shape == (1, 8, 8)
    assert isinstance(arch.build().get_submodule("bn1"), nn.BatchNorm2d)
    symmetry = arch.symmetry()
    assert symmetry.sizes == {"P_conv1": 8, "P_conv2": 16}
    assert symmetry.spec.axes_to_perm["bn2.running_mean"] == ("P_conv2",)
    match = match_models(arch, state_a, state_b, method, digits("train"), device=CPU)
    assert match.weight_distance_after < match.weight_distance_before
    train_data = digits("train").limit(CNN_TRAIN_EXAMPLES)
    result = analyze_pair(
        arch,
        state_a,
        state_b,
        digits("test").limit(180),
        AnalysisConfig(match=method, alphas=ALPHAS, llfc_alphas=(0.5,)),
        train_dataset=train_data,
        device=CPU,
    ).to_json()
    assert result["endpoints"]["a"]["batch_norm_reestimated"] is True
    naive, matched = result["pairs"]["naive"], result["pairs"]["matched"]
    assert matched["lmc"]["loss_barrier"] < naive["lmc"]["loss_barrier"]
