"""Reading, checking and writing checkpoints (state dicts) without trusting their bytes.

Two formats are read, told apart by their content, never by the file name:

* safetensors: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON describing each
  tensor (dtype, shape, byte range), then the raw data. The header is checked against the file
  size before anything is allocated.
* PyTorch (``torch.save``): a zip archive (``PK``), read with ``torch.load(weights_only=True)``
  only, and only on a torch of at least ``SAFE_TORCH_LOAD_VERSION`` (older ones can be made to
  run code or corrupt memory by a crafted file). There is no fallback to full unpickling, so a
  file that needs arbitrary code to load is refused instead of run. Before torch parses anything,
  the archive's directory is checked (:func:`check_torch_zip`): only the members ``torch.save``
  writes, all stored uncompressed and inside the file, and (given the arch) no more tensor data
  than the arch can hold, so no TorchScript archive reaches torch and no zip bomb is inflated.
  Accepted contents are a flat mapping ``name -> tensor``, or a dict whose one ``state_dict`` or
  ``model`` entry is such a mapping (training checkpoints that also hold the epoch or optimizer
  state). The legacy pickle stream (``\\x80``, before PyTorch 1.6) is refused: its loader
  allocates each storage at the size the file declares before reading it.

In both formats a ``module.`` prefix on every key (``nn.DataParallel``) and an ``_orig_mod.``
prefix on every key (a model wrapped by ``torch.compile``) are removed, in whichever order they
were put on. Other names that differ from the arch's are renamed only on request
(:mod:`llfc_core.key_maps`).

:func:`validate_state_dict` then holds a state dict against an architecture. Floating tensors of
any precision become float32 (the dtype every analysis runs in); integer tensors are accepted only
where the model itself has one (BatchNorm's ``num_batches_tracked``). Weights holding NaN or
infinity, including float64 values too large for float32, are refused rather than loaded: a
diverged model makes every interpolation and matching result meaningless, and the failure would
otherwise surface much later as NaN metrics.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from io import RawIOBase
from pathlib import Path
from typing import Any, BinaryIO, Literal

import safetensors
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file
from torch.torch_version import TorchVersion

from llfc_core.archs.base import Architecture
from llfc_core.errors import CheckpointFormatError, CheckpointMismatchError
from llfc_core.file_formats import (
    LIBRARY_HEADER_LIMIT,
    ZIP_LOCAL_HEADER,
    HeaderLimit,
    read_safetensors_header,
    read_zip_directory,
    sniff_file,
)
from llfc_core.permutation import StateDict

CheckpointFormat = Literal["safetensors", "torch"]

DATA_PARALLEL_PREFIX = "module."
COMPILED_PREFIX = "_orig_mod."
WRAPPER_PREFIXES = (DATA_PARALLEL_PREFIX, COMPILED_PREFIX)
"""Prefixes a wrapper puts on every key: ``nn.DataParallel`` / DDP and ``torch.compile``."""
WRAPPER_KEYS = ("state_dict", "model")
MAX_NAMES_IN_MESSAGE = 10
MAX_NAMES_IN_ERROR_FIELDS = 100
"""Names listed in each of a mismatch error's fields; a file of a million extra tensors would
otherwise make a 10 MB error body."""
HEADER_BASE_BYTES = 64 * 1024
HEADER_BYTES_PER_TENSOR = 1024
STORED_FORM_SCAN_BYTES = 16 * 1024 * 1024
"""Chunk of file data checked for NaN/Inf at a time by :func:`is_stored_form`."""
_STORED_DTYPES = {torch.float32: "F32", torch.int64: "I64"}
"""The safetensors dtype a tensor of the model's dtype is stored as."""

SAFE_TORCH_LOAD_VERSION = "2.10"
"""The oldest torch whose ``torch.load(weights_only=True)`` is trusted with a stranger's file:
before 2.6 a TorchScript archive reached ``torch.jit.load`` (CVE-2025-32434), before 2.10 the
weights-only unpickler could corrupt memory (CVE-2026-24747)."""
TORCH_ZIP_MAX_MEMBERS = 10_000
"""More members than any state dict of the supported archs (with optimizer state) needs."""
_TORCH_ZIP_MAX_DIRECTORY_BYTES = TORCH_ZIP_MAX_MEMBERS * 1024
"""Bound on the central directory, 1 KiB an entry (46 bytes plus name and extra fields), checked
from its declared size before ``zipfile`` reads it whole."""
TORCH_DATA_BYTES_PER_ELEMENT = 8 * 3
"""Tensor data a torch checkpoint may hold per element of its arch: float64 (8 bytes), for the
weights and, in a training checkpoint, an optimizer's two moments of the same shapes (Adam)."""
TORCH_DATA_SLACK_BYTES = 64 * 1024
"""Allowed beyond that for the small tensors of a training checkpoint (step counts, epoch...)."""
_TORCH_SAVE_MEMBERS = frozenset(
    {
        "data.pkl",
        "byteorder",
        "version",
        ".data/version",
        ".format_version",
        ".storage_alignment",
        ".data/serialization_id",
    }
)
"""What ``torch.save`` writes inside the archive's one top folder beside ``data/<n>`` (storage
``n``'s bytes); ``version`` is ``.data/version`` in some writers' versions. TorchScript's
``code/``, ``constants.pkl``, ``.debug_pkl`` and ``extra/`` are none of them."""
_STORAGE_MEMBER = re.compile(r"data/[0-9]+")


def read_checkpoint(
    path: Path, arch: Architecture | None = None
) -> tuple[StateDict, CheckpointFormat]:
    """The state dict stored at ``path`` and the format it was stored in.

    Given ``arch``, a torch archive holding more tensor data than the arch can use (see
    ``TORCH_DATA_BYTES_PER_ELEMENT``) is refused before torch allocates any of it.

    Raises :class:`CheckpointFormatError` for anything that is not a readable safetensors file or
    a weights-only PyTorch state dict: corrupt or truncated bytes, values that are not tensors,
    pickles that would run code, archives with members ``torch.save`` does not write, torch files
    on a torch older than ``SAFE_TORCH_LOAD_VERSION``.
    """
    try:
        size, file_format = sniff_file(path)
    except OSError as error:
        raise CheckpointFormatError(f"The checkpoint file could not be read: {error}.") from error
    if file_format == "safetensors":
        return load_safetensors(path, arch), "safetensors"
    if file_format in ("zip", "pickle") and not torch_load_is_safe():
        raise CheckpointFormatError(unsafe_torch_load_sentence())
    if file_format == "zip":
        check_torch_zip(path, arch)
        return _load_torch(path), "torch"
    if file_format == "pickle":
        raise CheckpointFormatError(
            "The checkpoint is in PyTorch's legacy (pre-1.6) format, which is not read: its "
            "loader allocates whatever sizes the file declares. Re-save it with torch.save from "
            "PyTorch 1.6 or later, or as safetensors."
        )
    raise CheckpointFormatError(
        f"The checkpoint ({size} bytes) is neither a safetensors file nor a PyTorch state dict "
        'saved with torch.save (an ONNX model is uploaded with the arch {"name": "onnx"}).'
    )


def checkpoint_header_limit(arch: Architecture) -> HeaderLimit:
    """The most safetensors header bytes a checkpoint of ``arch`` can need: about 1 KiB per tensor
    (name, dtype, shape, offsets) and room for metadata."""
    tensors = len(arch.expected_shapes())
    return HeaderLimit(
        HEADER_BASE_BYTES + HEADER_BYTES_PER_TENSOR * tensors,
        f"a checkpoint of the {arch.name} arch has {tensors} tensors; check that 'arch' "
        "describes this file",
    )


def load_safetensors(path: Path, arch: Architecture | None = None) -> StateDict:
    """Tensors of a safetensors file, after checking its header against the file size and,
    given ``arch``, against the header a checkpoint of it can need."""
    limit = LIBRARY_HEADER_LIMIT if arch is None else checkpoint_header_limit(arch)
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            read_safetensors_header(file, size, CheckpointFormatError, limit)
    except OSError as error:
        raise CheckpointFormatError(f"The checkpoint file could not be read: {error}.") from error
    try:
        tensors = load_file(path, device="cpu")
    except Exception as error:
        # The header checks above catch the common damage; anything the library still finds
        # (overlapping offsets, unknown dtypes...) is reported the same way, never raw.
        raise CheckpointFormatError(
            f"The safetensors file is corrupt and could not be read ({_first_line(error)})."
        ) from error
    return strip_wrapper_prefixes(tensors)


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

    A tensor the arch ties to another (a language model's head to its token embedding) may be
    left out, as Hugging Face's ``save_pretrained`` does: it is filled in from the other; given,
    it must equal it. Buffers the arch's library drops on load (GPT-2's old attention masks) are
    dropped here too.
    """
    discarded = arch.discarded_keys(state)
    state = {key: value for key, value in state.items() if key not in discarded}
    tied = arch.tied_tensors()
    state = {**{copy: state[source] for copy, source in tied.items() if source in state}, **state}
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
            missing=missing[:MAX_NAMES_IN_ERROR_FIELDS],
            unexpected=unexpected[:MAX_NAMES_IN_ERROR_FIELDS],
            mis_shaped=mis_shaped[:MAX_NAMES_IN_ERROR_FIELDS],
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
    differing = [
        f"{copy} and {source}"
        for copy, source in tied.items()
        if not torch.equal(cleaned[copy], cleaned[source])
    ]
    if differing:
        raise CheckpointFormatError(
            f"The checkpoint's tied tensors differ: {_names(differing)}; the {arch.name} arch "
            "uses one tensor for both (for a language model, tie_word_embeddings), so upload "
            "them equal or only the second of each pair."
        )
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
        size, file_format = sniff_file(path)
        if file_format != "safetensors":
            return None
        with path.open("rb") as file:
            header = read_safetensors_header(
                file, size, CheckpointFormatError, checkpoint_header_limit(arch)
            )
        # The library's own parser too: it refuses what load_file would refuse (overlapping
        # offsets, unknown dtypes, non-string metadata) without reading data.
        with safe_open(path, framework="pt"):
            pass
    except (OSError, CheckpointFormatError, safetensors.SafetensorError):
        return None
    with torch.device("meta"):
        expected = arch.build().state_dict()
    if set(header.entries) != set(expected):
        return None
    entries: dict[str, tuple[str, int, int]] = {}
    for name, reference in expected.items():
        entry = header.entries[name]
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
    if header.data_start + position != size:
        return None
    return header.data_start, entries


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


def torch_load_is_safe() -> bool:
    """Whether the installed torch is at least ``SAFE_TORCH_LOAD_VERSION`` (read at each call)."""
    return TorchVersion(torch.__version__) >= SAFE_TORCH_LOAD_VERSION


def unsafe_torch_load_sentence() -> str:
    """Why torch files are refused on this installation, for the uploader and the operator."""
    return (
        f"This server runs PyTorch {torch.__version__}, whose torch.load is not safe for files "
        f"from others (it needs {SAFE_TORCH_LOAD_VERSION} or later), so it accepts only "
        "safetensors checkpoints; convert the file with safetensors.torch.save_file, or ask the "
        "operator to upgrade PyTorch."
    )


def check_torch_zip(path: Path, arch: Architecture | None = None) -> None:
    """Refuse a zip archive that is not what ``torch.save`` writes, before torch parses it.

    Checked, from the archive's directories only (nothing is decompressed or unpickled): the
    number of members and the directory's size, before ``zipfile`` reads it; member names (one
    top folder holding only ``_TORCH_SAVE_MEMBERS`` and ``data/<n>``); every member stored
    uncompressed (``torch.save`` never compresses, so a compressed member can only be a zip
    bomb or not a torch file), unencrypted, and lying inside the file with its declared size;
    and, given ``arch``, the storages' total size against what the arch's tensors can take.

    Raises :class:`CheckpointFormatError` with the first problem found.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            _check_zip_directory_size(file, size)
            with zipfile.ZipFile(file) as archive:
                members = archive.infolist()
                if len(members) > TORCH_ZIP_MAX_MEMBERS:
                    raise _too_many_members(len(members))
                _check_member_names([member.filename for member in members])
                storage_bytes = sum(_checked_member(file, size, member) for member in members)
    except OSError as error:
        raise CheckpointFormatError(f"The checkpoint file could not be read: {error}.") from error
    except (zipfile.BadZipFile, ValueError, EOFError) as error:
        raise CheckpointFormatError(
            f"The PyTorch checkpoint is not a readable zip archive ({_first_line(error)}); it is "
            "corrupt or truncated."
        ) from error
    if storage_bytes > size:
        raise CheckpointFormatError(
            f"The PyTorch checkpoint's tensor data declares {storage_bytes:,} bytes but the file "
            f"holds only {size:,}; it is corrupt."
        )
    if arch is not None:
        elements = sum(math.prod(shape) for shape in arch.expected_shapes().values())
        allowed = elements * TORCH_DATA_BYTES_PER_ELEMENT + TORCH_DATA_SLACK_BYTES
        if storage_bytes > allowed:
            raise CheckpointFormatError(
                f"The PyTorch checkpoint holds {storage_bytes:,} bytes of tensor data, more than "
                f"the {arch.name} arch's {elements:,} values can use ({allowed:,} bytes even as "
                "float64 with optimizer state); check that 'arch' describes this file."
            )


def _check_zip_directory_size(file: BinaryIO, size: int) -> None:
    """Refuse an archive whose end records declare absurdly many members or directory bytes."""
    directory = read_zip_directory(file, size)
    if directory is None:
        raise CheckpointFormatError(
            "The PyTorch checkpoint has no zip directory at its end; it is corrupt or truncated."
        )
    if directory.members > TORCH_ZIP_MAX_MEMBERS:
        raise _too_many_members(directory.members)
    if directory.directory_bytes > _TORCH_ZIP_MAX_DIRECTORY_BYTES:
        raise CheckpointFormatError(
            f"The PyTorch checkpoint's zip directory declares {directory.directory_bytes:,} "
            "bytes, far more than torch.save writes; it is not a PyTorch state dict."
        )


def _too_many_members(count: int) -> CheckpointFormatError:
    return CheckpointFormatError(
        f"The PyTorch checkpoint's zip archive has {count:,} members, more than the "
        f"{TORCH_ZIP_MAX_MEMBERS:,} a state dict saved with torch.save can need."
    )


def _checked_member(file: BinaryIO, size: int, member: zipfile.ZipInfo) -> int:
    """The bytes member ``member`` holds if it is a tensor storage (``data/<n>``), else 0,
    after refusing it unless stored uncompressed and unencrypted inside the file."""
    if member.compress_type != zipfile.ZIP_STORED or member.file_size != member.compress_size:
        raise CheckpointFormatError(
            f"The PyTorch checkpoint's member {member.filename!r} is compressed, which "
            "torch.save never does; save the state dict again with torch.save, without "
            "re-packing the archive."
        )
    if member.flag_bits & 0x1:
        raise CheckpointFormatError(
            f"The PyTorch checkpoint's member {member.filename!r} is encrypted."
        )
    # The local header may differ from the directory (torch pads its extra field for
    # alignment); torch's reader takes the data offset from it, so check where the data ends.
    file.seek(member.header_offset)
    local = file.read(30)
    if len(local) < 30 or local[:4] != ZIP_LOCAL_HEADER:
        raise CheckpointFormatError(
            f"The PyTorch checkpoint's member {member.filename!r} has no local header where "
            "the zip directory says; it is corrupt."
        )
    method = int.from_bytes(local[8:10], "little")
    name_length = int.from_bytes(local[26:28], "little")
    extra_length = int.from_bytes(local[28:30], "little")
    data_end = member.header_offset + 30 + name_length + extra_length + member.file_size
    if method != zipfile.ZIP_STORED or data_end > size:
        raise CheckpointFormatError(
            f"The PyTorch checkpoint's member {member.filename!r} declares {member.file_size:,} "
            f"bytes that are not in the {size:,}-byte file (or are compressed); it is corrupt."
        )
    return member.file_size if _STORAGE_MEMBER.fullmatch(_inside_top_folder(member.filename)) else 0


def _inside_top_folder(name: str) -> str:
    return name.partition("/")[2]


def _check_member_names(names: list[str]) -> None:
    """One top folder (torch names it after the file) holding only what torch.save writes."""
    inside = {_inside_top_folder(name) for name in names}
    program = _program_archive(inside)
    if program is not None:
        raise CheckpointFormatError(
            f"This is {program}; its loader unpickles and can run code, so it is not accepted. "
            "Upload the model's state_dict (torch.save(model.state_dict(), path) or "
            "safetensors) with a zoo or built-in arch, or export the model to ONNX "
            '(torch.onnx.export) and upload the .onnx file with the arch {"name": "onnx"}.'
        )
    top_folders = {name.partition("/")[0] for name in names}
    foreign = [
        name
        for name in names
        if _inside_top_folder(name) not in _TORCH_SAVE_MEMBERS
        and not _STORAGE_MEMBER.fullmatch(_inside_top_folder(name))
    ]
    if foreign or len(top_folders) != 1:
        raise CheckpointFormatError(
            f"The zip archive holds {_names(foreign or sorted(top_folders))}, which torch.save "
            "does not write (a TorchScript archive or a re-packed file); upload a state dict "
            "saved with torch.save(model.state_dict(), path), or a safetensors file."
        )
    if not any(_inside_top_folder(name) == "data.pkl" for name in names):
        raise CheckpointFormatError(
            "The zip archive has no data.pkl, so it is not a PyTorch state dict saved with "
            "torch.save."
        )


def _program_archive(inside_names: set[str]) -> str | None:
    """Which archive of a whole program the member names (inside the top folder) show, if any:
    TorchScript (``torch.jit.save``: ``code/``, ``constants.pkl``) or torch.export
    (``torch.export.save``'s ``.pt2``: ``archive_format``, ``models/``)."""
    if "constants.pkl" in inside_names and any(name.startswith("code/") for name in inside_names):
        return "a TorchScript archive (torch.jit.save)"
    if "archive_format" in inside_names and any(
        name.startswith("models/") for name in inside_names
    ):
        return "a torch.export archive (.pt2, torch.export.save)"
    return None


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
    return strip_wrapper_prefixes(_unwrap_state_dict(loaded))


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


def strip_wrapper_prefixes(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Keys without the ``WRAPPER_PREFIXES`` a wrapper put on every one of them (a compiled
    DataParallel model has both, in the order it was wrapped)."""
    stripped = dict(state)
    while stripped:
        prefix = next(
            (p for p in WRAPPER_PREFIXES if all(key.startswith(p) for key in stripped)), None
        )
        if prefix is None:
            break
        stripped = {key[len(prefix) :]: value for key, value in stripped.items()}
    return stripped


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
