"""ONNX import: real torch.onnx.export output (both exporters) becomes a torch.fx graph of standard
modules that computes what the model and ONNX's reference evaluator compute, tensors named by
their initializers; files that would read other files or need unknown ops are refused with a
sentence; two uploads are held against each other."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import external_data_helper, helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from llfc_core.errors import IncompatiblePairError, OnnxModelError
from llfc_core.onnx_import import compare_onnx_graphs, onnx_to_torch, read_onnx_model

MAX_BYTES = 10_000_000


class MLP(nn.Module):
    def __init__(self, width: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, width)
        self.fc2 = nn.Linear(width, width)
        if depth > 2:
            self.fc3 = nn.Linear(width, width)
        self.out = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        if hasattr(self, "fc3"):
            x = torch.relu(self.fc3(x))
        return self.out(x)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.head(torch.flatten(pooled, 1))


def legacy_export(model: nn.Module, example: torch.Tensor) -> bytes:
    """The TorchScript-based exporter; a model in training mode keeps its BatchNorm nodes."""
    buffer = io.BytesIO()
    mode = torch.onnx.TrainingMode.TRAINING if model.training else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            training=mode,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    return buffer.getvalue()


def dynamo_export(model: nn.Module, example: torch.Tensor, optimize: bool = True) -> bytes:
    """The torch.export-based exporter (torch's default); ``optimize`` folds BatchNorm."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            optimize=optimize,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    assert program is not None
    return bytes(program.model_proto.SerializeToString())


def trained_cnn() -> SmallCNN:
    """Nonzero running statistics, so eval outputs depend on them."""
    torch.manual_seed(0)
    model = SmallCNN().train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 1, 6, 6) * 2 + 1)
    return model


def reference_output(model: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    outputs = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})
    return np.asarray(outputs[0])


@pytest.mark.parametrize("exporter", [legacy_export, dynamo_export])
def test_an_mlp_keeps_its_parameter_names_and_outputs(exporter) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    model = MLP().eval()
    x = torch.randn(5, 4)
    onnx_model = read_onnx_model(exporter(model, x), MAX_BYTES)
    converted = onnx_to_torch(onnx_model)
    assert list(converted.module.state_dict()) == list(model.state_dict())
    assert converted.tensor_names == {key: key for key in model.state_dict()}
    assert all(isinstance(converted.module.get_submodule(n), nn.Linear) for n in ("fc1", "out"))
    assert (converted.input_shape, converted.output_shape, converted.num_classes) == ((4,), (3,), 3)
    with torch.no_grad():
        expected = model(x)
        got = converted.module(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.numpy(), reference_output(onnx_model, x), rtol=1e-5, atol=1e-6)
    wider = torch.randn(7, 4)
    with torch.no_grad():
        torch.testing.assert_close(converted.module(wider), model(wider), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "export",
    [
        lambda model, x: legacy_export(model.train(), x),
        lambda model, x: dynamo_export(model, x, optimize=False),
    ],
    ids=["legacy-training-mode", "dynamo-unoptimized"],
)
def test_a_cnn_exported_with_its_batch_norm_keeps_running_statistics(export) -> None:  # type: ignore[no-untyped-def]
    model = trained_cnn()
    x = torch.randn(4, 1, 6, 6)
    onnx_model = read_onnx_model(export(model, x), MAX_BYTES)
    assert any(node.op_type == "BatchNormalization" for node in onnx_model.graph.node)
    converted = onnx_to_torch(onnx_model)
    norm = converted.module.get_submodule("features.1")
    assert isinstance(norm, nn.BatchNorm2d)
    assert isinstance(converted.module.get_submodule("features.0"), nn.Conv2d)
    torch.testing.assert_close(norm.running_mean, model.features[1].running_mean)
    torch.testing.assert_close(norm.running_var, model.features[1].running_var)
    assert norm.momentum == pytest.approx(0.1)
    # num_batches_tracked has no initializer: in the state dict, not in the name mapping.
    assert set(converted.module.state_dict()) == set(model.state_dict())
    assert "features.1.num_batches_tracked" not in converted.tensor_names
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(converted.module(x), model(x), rtol=1e-5, atol=1e-5)


def test_an_eval_mode_export_folds_batch_norm_into_the_convolutions() -> None:
    model = trained_cnn().eval()
    x = torch.randn(4, 1, 6, 6)
    onnx_model = read_onnx_model(legacy_export(model, x), MAX_BYTES)
    converted = onnx_to_torch(onnx_model)
    modules = list(converted.module.modules())
    assert not any(isinstance(module, nn.BatchNorm2d) for module in modules)
    assert sum(isinstance(module, nn.Conv2d) for module in modules) == 2
    # The folded weights get new names, which the mapping gives back.
    assert converted.tensor_names["head.weight"] == "head.weight"
    assert any(name.startswith("onnx::Conv") for name in converted.tensor_names.values())
    with torch.no_grad():
        got = converted.module(x)
        torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.numpy(), reference_output(onnx_model, x), rtol=1e-5, atol=1e-6)


def test_the_default_exporter_flattens_with_standard_torch_forms() -> None:
    converted = onnx_to_torch(
        read_onnx_model(dynamo_export(trained_cnn().eval(), torch.randn(2, 1, 6, 6)), MAX_BYTES)
    )
    targets = [node.target for node in converted.module.graph.nodes]
    assert torch.flatten in targets
    assert isinstance(converted.module.get_submodule("globalaveragepool_0"), nn.AdaptiveAvgPool2d)


def _tiny_model(node: onnx.NodeProto, opset: int = 17, domain: str = "") -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, opset)])


def test_an_op_outside_the_allowlist_is_refused_by_name() -> None:
    model = _tiny_model(helper.make_node("Hardmax", ["x"], ["y"], name="pick"))
    with pytest.raises(OnnxModelError, match=r"not supported: Hardmax \(first at node 0"):
        read_onnx_model(model.SerializeToString(), MAX_BYTES)


def test_a_subgraph_is_refused() -> None:
    branch = helper.make_graph([], "branch", [], [])
    node = helper.make_node("If", ["x"], ["y"], then_branch=branch, else_branch=branch)
    with pytest.raises(OnnxModelError, match="holds a subgraph"):
        read_onnx_model(_tiny_model(node).SerializeToString(), MAX_BYTES)


def test_a_foreign_domain_is_refused() -> None:
    model = _tiny_model(helper.make_node("Relu", ["x"], ["y"]), domain="com.microsoft")
    with pytest.raises(OnnxModelError, match=r"op domain 'com\.microsoft'"):
        read_onnx_model(model.SerializeToString(), MAX_BYTES)


def test_external_data_is_refused_without_being_read(tmp_path: Path) -> None:
    model = onnx.load_model_from_string(legacy_export(MLP().eval(), torch.randn(2, 4)))
    external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0
    )
    with pytest.raises(OnnxModelError, match=r"initializer 'fc1\.weight' is stored in an external"):
        read_onnx_model(model.SerializeToString(), MAX_BYTES)


def test_a_file_over_the_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(legacy_export(MLP().eval(), torch.randn(2, 4)))
    with pytest.raises(OnnxModelError, match="more than the 100 allowed"):
        read_onnx_model(path, 100)
    assert onnx_to_torch(read_onnx_model(path, MAX_BYTES)).num_classes == 3


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        (b"\xff\xfe garbage that is no protobuf", "not an ONNX model"),
        (b"PK\x03\x04rest of a zip", "is a zip archive"),
        (b"", "no ONNX graph nodes"),
    ],
)
def test_bytes_that_are_no_onnx_model_are_refused(data: bytes, phrase: str) -> None:
    with pytest.raises(OnnxModelError, match=phrase):
        read_onnx_model(data, MAX_BYTES)


def test_asymmetric_padding_is_refused_not_guessed() -> None:
    weight = helper.make_tensor("w", onnx.TensorProto.FLOAT, [2, 1, 3, 3], [0.0] * 18)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[0, 0, 1, 1], name="conv")
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 1, 5, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxModelError, match=r"node 0 \(Conv 'conv'\) pads asymmetrically"):
        onnx_to_torch(read_onnx_model(model.SerializeToString(), MAX_BYTES))


def test_two_exports_of_one_class_are_the_same_graph() -> None:
    x = torch.randn(2, 4)
    torch.manual_seed(1)
    first = onnx_to_torch(read_onnx_model(legacy_export(MLP().eval(), x), MAX_BYTES))
    torch.manual_seed(2)
    second = onnx_to_torch(read_onnx_model(legacy_export(MLP().eval(), x), MAX_BYTES))
    assert not torch.equal(
        first.module.state_dict()["fc1.weight"], second.module.state_dict()["fc1.weight"]
    )
    compare_onnx_graphs(first.signature, second.signature)


def test_a_different_width_or_depth_is_named_where_it_differs() -> None:
    x = torch.randn(2, 4)
    base = onnx_to_torch(read_onnx_model(legacy_export(MLP().eval(), x), MAX_BYTES))
    wider = onnx_to_torch(read_onnx_model(legacy_export(MLP(width=16).eval(), x), MAX_BYTES))
    deeper = onnx_to_torch(read_onnx_model(legacy_export(MLP(depth=3).eval(), x), MAX_BYTES))
    with pytest.raises(IncompatiblePairError, match=r"initializer 'fc1.weight' has shape \[8, 4\]"):
        compare_onnx_graphs(base.signature, wider.signature)
    with pytest.raises(
        IncompatiblePairError, match=r"node 4 is Gemm '/out/Gemm'.* and Gemm '/fc3/Gemm'"
    ):
        compare_onnx_graphs(base.signature, deeper.signature)
