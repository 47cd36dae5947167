"""A lab's own model from one uploaded ``.onnx`` file (graph and weights), as a torch.fx graph of
standard torch modules, without running any of the file's code: read and checked
(:func:`read_onnx_model`), converted (:func:`onnx_to_torch`), and held against another upload
(:func:`compare_onnx_graphs`)."""

from llfc_core.onnx_import.conversion import OnnxTorchModel, onnx_to_torch
from llfc_core.onnx_import.ops import SUPPORTED_OPS
from llfc_core.onnx_import.reading import read_onnx_model
from llfc_core.onnx_import.signature import GraphSignature, NodeSignature, compare_onnx_graphs

__all__ = [
    "SUPPORTED_OPS",
    "GraphSignature",
    "NodeSignature",
    "OnnxTorchModel",
    "compare_onnx_graphs",
    "onnx_to_torch",
    "read_onnx_model",
]
