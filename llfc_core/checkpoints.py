"""Reading, checking and writing checkpoints (state dicts) without trusting their bytes.

Two formats are read, told apart by their content, never by the file name:

* safetensors: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON describing each
  tensor (dtype, shape, byte range), then the raw data. The header is checked against the file
  size before anything is allocated.
* PyTorch (``torch.save``): a zip archive (``PK``) or the legacy pickle stream (``\\x80``), read
  with ``torch.load(weights_only=True)`` only. There is no fallback to full unpickling, so a file
  that needs arbitrary code to load is refused instead of run. Accepted contents are a flat
  mapping ``name -> tensor``, or a dict whose one ``state_dict`` or ``model`` entry is such a
  mapping (training checkpoints that also hold the epoch or optimizer state).

In both formats a ``module.`` prefix on every key (``nn.DataParallel``) is removed.

:func:`validate_state_dict` then holds a state dict against an architecture. Floating tensors of
any precision become float32 (the dtype every analysis runs in); integer tensors are accepted only
where the model itself has one (BatchNorm's ``num_batches_tracked``). Weights holding NaN or
infinity, including float64 values too large for float32, are refused rather than loaded: a
diverged model makes every interpolation and matching result meaningless, and the failure would
otherwise surface much later as NaN metrics.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
from collections.abc import Mapping
from io import RawIOBase
from pathlib import Path
from typing import Any, Literal

import safetensors
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from llfc_core.archs.base import Architecture
from llfc_core.errors import CheckpointFormatError, CheckpointMismatchError
from llfc_core.permutation import StateDict

CheckpointFormat = Literal["safetensors", "torch"]

SAFETENSORS_MAX_HEADER_BYTES = 100_000_000
"""The safetensors library's own limit on the JSON header."""
DATA_PARALLEL_PREFIX = "module."
WRAPPER_KEYS = ("state_dict", "model")
MAX_NAMES_IN_MESSAGE = 10
STORED_FORM_SCAN_BYTES = 16 * 1024 * 1024
"""Chunk of file data checked for NaN/Inf at a time by :func:`is_stored_form`."""
_STORED_DTYPES = {torch.float32: "F32", torch.int64: "I64"}
"""The safetensors dtype a tensor of the model's dtype is stored as."""


def read_checkpoint(path: Path) -> tuple[StateDict, CheckpointFormat]:
    """The state dict stored at ``path`` and the format it was stored in.

    Raises :class:`CheckpointFormatError` for anything that is not a readable safetensors file or
    a weights-only PyTorch state dict: corrupt or truncated bytes, values that are not tensors,
    pickles that would run code.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            head = file.read(9)
    except OSError as error:
        raise CheckpointFormatError(f"The checkpoint file could not be read: {error}.") from error
    # A safetensors JSON header starts right after its 8-byte length; a zip archive or a pickle
    # stream never has "{" at byte 8, so this test cannot mistake one format for the other.
    if len(head) == 9 and head[8:9] == b"{":
        return load_safetensors(path), "safetensors"
    if head.startswith((b"PK", b"\x80")):
        return _load_torch(path), "torch"
    raise CheckpointFormatError(
        f"The checkpoint ({size} bytes) is neither a safetensors file nor a PyTorch state dict "
        "saved with torch.save."
    )


def load_safetensors(path: Path) -> StateDict:
    """Tensors of a safetensors file, after checking its header against the file size."""
    _check_safetensors_header(path)
    try:
        tensors = load_file(path, device="cpu")
    except Exception as error:
        # The header checks above catch the common damage; anything the library still finds
        # (overlapping offsets, unknown dtypes...) is reported the same way, never raw.
        raise CheckpointFormatError(
            f"The safetensors file is corrupt and could not be read ({_first_line(error)})."
        ) from error
    return _strip_data_parallel_prefix(tensors)


def save_safetensors(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` as a safetensors file; the file appears complete or not at all."""
    partial = path.with_name(f".{path.name}.partial")
    save_file(_plain_tensors(state), partial, metadata={"format": "pt"})
    os.replace(partial, path)


def safetensors_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """``state`` serialised as safetensors, in memory."""
    return save(_plain_tensors(state), metadata={"format": "pt"})


def validate_state_dict(arch: Architecture, state: Mapping[str, torch.Tensor]) -> StateDict:
    """``state`` checked against ``arch`` and cleaned: model key order, float32 CPU weights.

    Raises :class:`CheckpointMismatchError` naming missing, unexpected and mis-shaped tensors,
    and :class:`CheckpointFormatError` naming tensors of an unusable dtype or with NaN/Inf values.
    """
    with torch.device("meta"):
        expected = arch.build().state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mis_shaped = [
        key
        for key in expected
        if key in state
        and isinstance(state[key], torch.Tensor)
        and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or mis_shaped:
        problems = []
        if missing:
            problems.append(f"missing {_names(missing)}")
        if unexpected:
            problems.append(f"unexpected {_names(unexpected)}")
        if mis_shaped:
            shapes = [
                f"{key} (expected {list(expected[key].shape)}, got {list(state[key].shape)})"
                for key in mis_shaped
            ]
            problems.append(f"mis-shaped {_names(shapes)}")
        raise CheckpointMismatchError(
            f"The checkpoint does not fit the {arch.name} arch: {'; '.join(problems)}.",
            missing=missing,
            unexpected=unexpected,
            mis_shaped=mis_shaped,
        )

    cleaned: StateDict = {}
    wrong_dtype = []
    for key, reference in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            wrong_dtype.append(f"{key} (not a dense tensor)")
        elif reference.is_floating_point() and value.is_floating_point():
            cleaned[key] = value.detach().to(device="cpu", dtype=torch.float32).contiguous()
        elif _is_integer(reference.dtype) and _is_integer(value.dtype):
            cleaned[key] = value.detach().to(device="cpu", dtype=reference.dtype).contiguous()
        else:
            needed = "floating point" if reference.is_floating_point() else "integer"
            wrong_dtype.append(f"{key} ({value.dtype}, the model needs {needed})")
    if wrong_dtype:
        raise CheckpointFormatError(
            f"The checkpoint has tensors of a type the {arch.name} arch cannot use: "
            f"{_names(wrong_dtype)}."
        )
    non_finite = [
        key for key, value in cleaned.items() if value.is_floating_point() and not _finite(value)
    ]
    if non_finite:
        raise _non_finite_error(non_finite)
    return cleaned


def is_stored_form(arch: Architecture, path: Path) -> bool:
    """Whether the file at ``path`` already is what :func:`validate_state_dict` would produce.

    True for a safetensors file holding exactly the tensors of ``arch`` (no missing or extra
    keys, no ``module.`` prefix) with the model's shapes, F32 for floating tensors and I64 for
    integer buffers, packed back to back to the end of the file, and accepted by the
    safetensors library's own header checks: storing it as it is equals loading, cleaning and
    re-writing it, without holding the whole state dict in memory. False for any other file, which
    then takes the general path (:func:`read_checkpoint`, :func:`validate_state_dict`).

    Raises :class:`CheckpointFormatError` naming the tensors that hold NaN or infinity, found by
    reading the data in ``STORED_FORM_SCAN_BYTES`` chunks.
    """
    stored_form = _stored_form_header(arch, path)
    if stored_form is None:
        return False
    data_start, entries = stored_form
    chunk = bytearray(STORED_FORM_SCAN_BYTES)
    with path.open("rb", buffering=0) as file:
        non_finite = [
            name
            for name, (dtype, begin, end) in entries.items()
            if dtype == "F32"
            and not _finite_f32_bytes(file, data_start + begin, data_start + end, chunk)
        ]
    if non_finite:
        raise _non_finite_error(non_finite)
    return True


def _stored_form_header(
    arch: Architecture, path: Path
) -> tuple[int, dict[str, tuple[str, int, int]]] | None:
    """The file offset of the data and ``name -> (dtype, data begin, data end)`` of a safetensors
    file in the stored form of ``arch`` (see :func:`is_stored_form`), or None when it is not."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            head = file.read(9)
            if len(head) < 9 or head[8:9] != b"{":
                return None
            header_length = int.from_bytes(head[:8], "little")
            if header_length > SAFETENSORS_MAX_HEADER_BYTES or 8 + header_length > size:
                return None
            # The library's own parser first: it refuses what load_file would refuse (bad
            # offsets, unknown dtypes, non-string metadata, deep nesting) without reading data.
            with safe_open(path, framework="pt"):
                pass
            file.seek(8)
            header = json.loads(file.read(header_length))
    except (OSError, ValueError, safetensors.SafetensorError):
        return None
    if not isinstance(header, dict):
        return None
    header.pop("__metadata__", None)
    with torch.device("meta"):
        expected = arch.build().state_dict()
    if set(header) != set(expected):
        return None
    entries: dict[str, tuple[str, int, int]] = {}
    for name, reference in expected.items():
        entry = header[name]
        wanted_dtype = _STORED_DTYPES.get(reference.dtype)
        if (
            not isinstance(entry, dict)
            or entry.get("dtype") != wanted_dtype
            or entry.get("shape") != list(reference.shape)
        ):
            return None
        begin, end = entry["data_offsets"]
        if end - begin != reference.numel() * reference.element_size():
            return None
        entries[name] = (entry["dtype"], begin, end)
    # Back to back from the first data byte to the last: no gap, overlap or trailing bytes.
    position = 0
    for _dtype, begin, end in sorted(entries.values(), key=lambda item: item[1]):
        if begin != position:
            return None
        position = end
    if 8 + header_length + position != size:
        return None
    return 8 + header_length, entries


def _finite_f32_bytes(file: RawIOBase, start: int, end: int, chunk: bytearray) -> bool:
    """Whether the float32 values from file offset ``start`` to ``end - start`` bytes later are
    all finite, read ``len(chunk)`` bytes at a time."""
    file.seek(start)
    view = memoryview(chunk)
    remaining = end - start
    while remaining:
        wanted = min(remaining, len(chunk))
        count = file.readinto(view[:wanted])
        if count != wanted:
            raise CheckpointFormatError("The safetensors file is truncated; it changed while read.")
        values = torch.frombuffer(chunk, dtype=torch.float32, count=count // 4)
        if not _finite(values):
            return False
        remaining -= count
    return True


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity: the minimum and maximum are finite (NaN propagates into both).

    ``torch.aminmax`` reduces in one pass without the full boolean temporary of ``isfinite``.
    """
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return math.isfinite(low.item()) and math.isfinite(high.item())


def _non_finite_error(names: list[str]) -> CheckpointFormatError:
    return CheckpointFormatError(
        f"The checkpoint has NaN or infinite values (or values too large for float32) in "
        f"{_names(names)}; a diverged model cannot be compared or aligned."
    )


def _check_safetensors_header(path: Path) -> None:
    """Refuse a header that is too large, not JSON, or points past the end of the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            length_bytes = file.read(8)
            if len(length_bytes) < 8:
                raise CheckpointFormatError(
                    f"The safetensors file is truncated: it holds only {size} bytes."
                )
            header_length = int.from_bytes(length_bytes, "little")
            if header_length > SAFETENSORS_MAX_HEADER_BYTES:
                raise CheckpointFormatError(
                    f"The safetensors header claims {header_length:,} bytes, more than the "
                    f"{SAFETENSORS_MAX_HEADER_BYTES:,} allowed."
                )
            if 8 + header_length > size:
                raise CheckpointFormatError(
                    f"The safetensors header claims {header_length:,} bytes but the file holds "
                    f"only {size - 8:,} after the length; it is truncated or corrupt."
                )
            header_text = file.read(header_length)
    except OSError as error:
        raise CheckpointFormatError(f"The checkpoint file could not be read: {error}.") from error
    try:
        header = json.loads(header_text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointFormatError(
            "The safetensors header is not valid JSON; the file is corrupt."
        ) from error
    if not isinstance(header, dict):
        raise CheckpointFormatError("The safetensors header is not a JSON object.")
    data_size = size - 8 - header_length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise CheckpointFormatError(
                f"The safetensors header entry for {name!r} has no valid data_offsets."
            )
        if offsets[1] > data_size:
            raise CheckpointFormatError(
                f"The safetensors file is truncated: tensor {name!r} ends at data byte "
                f"{offsets[1]:,} but the file holds only {data_size:,} data bytes."
            )


def _load_torch(path: Path) -> StateDict:
    """A state dict saved with ``torch.save``, read without running any code from the file."""
    try:
        # An open file, not the path: given a path, torch.load picks a reader by file suffix.
        with path.open("rb") as file, warnings.catch_warnings():
            # Old pickle protocols make torch warn; the load itself is what we check.
            warnings.simplefilter("ignore")
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointFormatError(
            "The PyTorch checkpoint holds objects other than tensors (classes or code, which are "
            "not loaded for safety) or is corrupt; save only the state dict, e.g. "
            "torch.save(model.state_dict(), path), or use safetensors."
        ) from error
    except Exception as error:
        # torch.load raises many types (RuntimeError, EOFError, zipfile and struct errors...)
        # for damaged bytes; all of them mean the same thing to the user.
        raise CheckpointFormatError(
            f"The PyTorch checkpoint is corrupt or truncated and could not be read "
            f"({type(error).__name__})."
        ) from error
    return _strip_data_parallel_prefix(_unwrap_state_dict(loaded))


def _unwrap_state_dict(loaded: Any) -> dict[str, torch.Tensor]:
    """The flat ``name -> tensor`` mapping inside what ``torch.load`` returned."""
    if not isinstance(loaded, Mapping):
        raise CheckpointFormatError(
            f"The PyTorch checkpoint holds a {type(loaded).__name__}, not a state dict "
            "(a mapping from parameter names to tensors)."
        )
    if not loaded:
        raise CheckpointFormatError("The PyTorch checkpoint is an empty mapping with no tensors.")
    if _is_flat_state_dict(loaded):
        return dict(loaded)
    wrappers = [key for key in WRAPPER_KEYS if key in loaded]
    if len(wrappers) > 1:
        raise CheckpointFormatError(
            "The PyTorch checkpoint has both a 'state_dict' and a 'model' entry; save only the "
            "state dict of the model to analyse."
        )
    if wrappers and _is_flat_state_dict(loaded[wrappers[0]]):
        return dict(loaded[wrappers[0]])
    not_tensors = [
        str(key)
        for key, value in loaded.items()
        if not isinstance(key, str) or not isinstance(value, torch.Tensor)
    ]
    raise CheckpointFormatError(
        f"The PyTorch checkpoint is not a state dict: {_names(not_tensors)} are not tensors, "
        "and no single 'state_dict' or 'model' entry holds a mapping of names to tensors."
    )


def _is_flat_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _strip_data_parallel_prefix(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Keys without the ``module.`` that ``nn.DataParallel`` puts on every one of them."""
    if state and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        return {key[len(DATA_PARALLEL_PREFIX) :]: value for key, value in state.items()}
    return dict(state)


def _plain_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing memory (safetensors refuses shared storage)."""
    plain: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storages and tensor.numel() > 0:
            tensor = tensor.clone()
        seen_storages.add(tensor.untyped_storage().data_ptr())
        plain[key] = tensor
    return plain


def _is_integer(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


def _names(names: list[str]) -> str:
    """A readable list of at most ``MAX_NAMES_IN_MESSAGE`` names, with a count of the rest."""
    shown = ", ".join(names[:MAX_NAMES_IN_MESSAGE])
    hidden = len(names) - MAX_NAMES_IN_MESSAGE
    return f"{shown} and {hidden} more" if hidden > 0 else shown


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
