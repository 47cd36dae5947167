"""Reading an uploaded ``.onnx`` file, refusing before conversion anything that would read other
files, run code or need an op the converter lacks.

ONNX files have no magic number (a ModelProto is a bare protobuf message), so nothing sniffs a
file as ONNX: a file is read as ONNX only when its arch says so (``{"name": "onnx"}``). Bytes
that are recognisably another format (safetensors, a zip archive, a pickle) are refused here with
a sentence naming that format.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from llfc_core.errors import OnnxModelError
from llfc_core.file_formats import HEAD_BYTES, sniff_format
from llfc_core.onnx_import.building import describe
from llfc_core.onnx_import.ops import SUPPORTED_OPS

DEFAULT_DOMAINS = ("", "ai.onnx")
MIN_OPSET = 13
"""Older opsets give Softmax, Squeeze and Unsqueeze other meanings; exporters write 17 or later."""
_OTHER_FORMATS = {
    "safetensors": "a safetensors file",
    "zip": "a zip archive (a PyTorch checkpoint, TorchScript or torch.export archive)",
    "pickle": "a pickle (a legacy PyTorch checkpoint)",
}


def read_onnx_model(source: bytes | Path, max_bytes: int) -> onnx.ModelProto:
    """The ONNX model in ``source`` (its bytes, or a file), checked before anything converts it.

    Refused with :class:`OnnxModelError`: more than ``max_bytes``; bytes that are not an ONNX
    ModelProto; tensors stored outside the file (external data is never loaded); sparse
    initializers; model-local functions; subgraphs (If, Loop, Scan); domains other than the
    default ``ai.onnx``; opsets before 13; any op outside the allowlist
    (:data:`~llfc_core.onnx_import.ops.OP_CONVERTERS`), all of them named at once.
    """
    if isinstance(source, Path):
        try:
            size = source.stat().st_size
            if size > max_bytes:
                raise _too_large(size, max_bytes)
            data = source.read_bytes()
        except OSError as error:
            raise OnnxModelError(f"The ONNX file could not be read: {error}.") from error
    else:
        data = source
    if len(data) > max_bytes:
        raise _too_large(len(data), max_bytes)
    other_format = sniff_format(data[:HEAD_BYTES])
    if other_format is not None:
        raise OnnxModelError(
            f"The file is {_OTHER_FORMATS[other_format]}, not an ONNX model; with the arch "
            '{"name": "onnx"} upload the .onnx file torch.onnx.export writes.'
        )
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError) as error:
        raise OnnxModelError(
            "The file is not an ONNX model (it does not parse as an ONNX ModelProto); upload "
            "the .onnx file torch.onnx.export writes."
        ) from error
    _check_model(model)
    return model


def _too_large(size: int, max_bytes: int) -> OnnxModelError:
    return OnnxModelError(
        f"The ONNX file holds {size:,} bytes, more than the {max_bytes:,} allowed for an upload."
    )


def _check_model(model: onnx.ModelProto) -> None:
    graph = model.graph
    if not graph.node:
        raise OnnxModelError(
            "The file holds no ONNX graph nodes; it is not an ONNX model or it is empty."
        )
    if model.functions:
        raise OnnxModelError(
            f"The ONNX model defines local functions ({model.functions[0].name!r}...), which are "
            "not read; export without export_modules_as_functions."
        )
    for opset in model.opset_import:
        if opset.domain not in DEFAULT_DOMAINS:
            raise OnnxModelError(
                f"The ONNX model imports the op domain {opset.domain!r}; only the standard "
                "ai.onnx ops are read."
            )
        if opset.version < MIN_OPSET:
            raise OnnxModelError(
                f"The ONNX model uses opset {opset.version}; export it with opset {MIN_OPSET} "
                "or later (torch.onnx.export's opset_version)."
            )
    if graph.sparse_initializer:
        raise OnnxModelError(
            "The ONNX model has sparse initializers, which are not read; export dense weights."
        )
    for tensor in graph.initializer:
        _check_stored_here(tensor, f"initializer {tensor.name!r}")
    unknown: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        if node.domain not in DEFAULT_DOMAINS:
            raise OnnxModelError(
                f"The ONNX graph's {describe(index, node)} is in the op domain {node.domain!r}; "
                "only the standard ai.onnx ops are read."
            )
        for attribute in node.attribute:
            if attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise OnnxModelError(
                    f"The ONNX graph's {describe(index, node)} holds a subgraph (control flow), "
                    "which is not read."
                )
            if attribute.type in (
                onnx.AttributeProto.SPARSE_TENSOR,
                onnx.AttributeProto.SPARSE_TENSORS,
            ):
                raise OnnxModelError(
                    f"The ONNX graph's {describe(index, node)} holds a sparse tensor, which is "
                    "not read."
                )
            if attribute.type == onnx.AttributeProto.TENSOR:
                _check_stored_here(attribute.t, f"{describe(index, node)}'s {attribute.name}")
            for tensor in attribute.tensors:
                _check_stored_here(tensor, f"{describe(index, node)}'s {attribute.name}")
        if node.op_type not in SUPPORTED_OPS:
            unknown.setdefault(node.op_type, describe(index, node))
    if unknown:
        listed = ", ".join(f"{op} (first at {where})" for op, where in sorted(unknown.items()))
        raise OnnxModelError(
            f"The ONNX graph uses ops that are not supported: {listed}. The supported ops are "
            f"{', '.join(sorted(SUPPORTED_OPS))}."
        )


def _check_stored_here(tensor: onnx.TensorProto, what: str) -> None:
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
        raise OnnxModelError(
            f"The ONNX model's {what} is stored in an external data file, which is never read; "
            "export the model as one file (torch.onnx.export(..., external_data=False))."
        )
