"""Datasets, read in batches ``(x, y)``: examples ``x`` (N x ...) with integer class labels ``y``
(N,), or token sequences ``x`` (N x T integer token ids) whose targets ``y`` are the tokens
themselves (:mod:`llfc_core.tasks` scores each kind).

Everything the analysis and training read goes through the :class:`Dataset` protocol, so an
in-memory :class:`ArrayDataset` and a streaming :class:`SyntheticDataset` are interchangeable.
Files are read without unpickling anything and with their sizes checked before any allocation;
built-in datasets come from scikit-learn or from a local folder and are never downloaded.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from llfc_core.archs.base import Architecture
from llfc_core.errors import DatasetError
from llfc_core.file_formats import (
    HeaderLimit,
    SafetensorsHeader,
    read_safetensors_header,
    read_zip_directory,
    sniff_file,
)
from llfc_core.tasks import DataKind

Batch = tuple[torch.Tensor, torch.Tensor]

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

MAX_NUM_CLASSES = 1_000_000
"""Labels are class indices; a label this large is a mistake in the file, not a class."""


@runtime_checkable
class Dataset(Protocol):
    """What the analysis and training need from a dataset: its size, shape and batches."""

    @property
    def name(self) -> str: ...

    @property
    def num_examples(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def num_classes(self) -> int:
        """Largest label (largest token, for tokens) + 1."""
        ...

    @property
    def kind(self) -> DataKind:
        """``labelled`` (a class per example) or ``tokens`` (sequences of token ids)."""
        ...

    def limit(self, max_examples: int | None) -> Dataset:
        """The first ``max_examples`` examples (all when None)."""
        ...

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Every example once, in a fixed order (the analysis is deterministic)."""
        ...

    def shuffled_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Every example once, in an order drawn from ``generator`` (training)."""
        ...

    def num_batches(self, batch_size: int) -> int:
        """How many batches ``batches`` and ``shuffled_batches`` yield."""
        ...


@dataclass(frozen=True)
class ArrayDataset:
    """Examples ``x`` (float32, N x ...) with class labels ``y`` (int64, N); or, of kind
    ``tokens``, token ids ``x`` (int64, N x T) with ``y`` the same tensor (see
    :func:`token_dataset`)."""

    x: torch.Tensor
    y: torch.Tensor
    name: str = "arrays"
    kind: DataKind = "labelled"

    def __post_init__(self) -> None:
        if self.x.ndim < 2:
            raise DatasetError("The array 'x' must have a batch dimension and features (N x ...).")
        if self.kind == "tokens":
            if self.x.ndim != 2 or self.x.is_floating_point() or self.y.shape != self.x.shape:
                raise DatasetError(
                    "A token dataset's 'x' must be N x T integer token ids, its own targets."
                )
            return
        if self.y.ndim != 1 or self.y.shape[0] != self.x.shape[0]:
            raise DatasetError(
                f"The array 'y' must be one label per example: x has {self.x.shape[0]} examples, "
                f"y has shape {tuple(self.y.shape)}."
            )

    @property
    def num_examples(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(self.y.max().item()) + 1 if self.num_examples else 0

    def limit(self, max_examples: int | None) -> ArrayDataset:
        """The first ``max_examples`` examples (all when None)."""
        if max_examples is None or max_examples >= self.num_examples:
            return self
        return ArrayDataset(self.x[:max_examples], self.y[:max_examples], self.name, self.kind)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Consecutive batches in a fixed order (analysis is deterministic)."""
        for start in range(0, self.num_examples, batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]

    def shuffled_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Batches in an order drawn from ``generator`` (training)."""
        order = torch.randperm(self.num_examples, generator=generator)
        for start in range(0, self.num_examples, batch_size):
            index = order[start : start + batch_size]
            yield self.x[index], self.y[index]

    def num_batches(self, batch_size: int) -> int:
        return (self.num_examples + batch_size - 1) // batch_size


def token_dataset(tokens: torch.Tensor, name: str = "tokens") -> ArrayDataset:
    """Token sequences ``tokens`` (N x T integers) as a dataset whose targets are themselves."""
    tokens = tokens.long()
    return ArrayDataset(tokens, tokens, name, "tokens")


# --- Synthetic data, streamed ---------------------------------------------------------------

SYNTHETIC_CHUNK = 512
"""Examples generated together; example i is always row i % 512 of chunk i // 512."""

SYNTHETIC_MEAN_NORM = 3.0
"""Distance of each class mean from the origin, in units of the per-coordinate noise."""


@dataclass(frozen=True)
class SyntheticDataset:
    """A Gaussian mixture generated on the fly, never held in memory as a whole.

    Class ``c`` has a mean ``mu_c`` (a random direction of norm 3, drawn from ``seed``); an example
    is ``x = mu_y + n`` with ``y`` uniform over the classes and ``n ~ N(0, I)``. Along the line
    through two means the classes are about 4.2 noise standard deviations apart, so a trained
    model is accurate but not perfect. Examples come in chunks of :data:`SYNTHETIC_CHUNK`, each
    drawn from its own generator seeded by ``(seed, chunk index)``: any batch is reproducible
    on its own, and memory holds one chunk and one batch whatever ``num_examples`` is.
    """

    num_examples: int
    input_shape: tuple[int, ...]
    num_classes: int
    seed: int = 0
    name: str = field(default="synthetic", compare=False)

    def __post_init__(self) -> None:
        shape = tuple(self.input_shape)
        object.__setattr__(self, "input_shape", shape)
        if not _is_int(self.num_examples) or self.num_examples < 0:
            raise DatasetError(
                f"A synthetic dataset needs num_examples >= 0, got {self.num_examples!r}."
            )
        if not shape or not all(_is_int(size) and size >= 1 for size in shape):
            raise DatasetError(
                f"A synthetic dataset needs an input shape of positive integers, got {shape!r}."
            )
        if not _is_int(self.num_classes) or not 2 <= self.num_classes <= MAX_NUM_CLASSES:
            raise DatasetError(
                f"A synthetic dataset needs 2 to {MAX_NUM_CLASSES:,} classes, "
                f"got {self.num_classes!r}."
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise DatasetError(f"A synthetic dataset needs a seed >= 0, got {self.seed!r}.")

    @property
    def kind(self) -> DataKind:
        return "labelled"

    @cached_property
    def class_means(self) -> np.ndarray:
        """``mu_c`` for every class, as a (classes x features) float32 array."""
        rng = np.random.default_rng([self.seed, 0])
        directions = rng.standard_normal((self.num_classes, math.prod(self.input_shape)))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        return (SYNTHETIC_MEAN_NORM * directions).astype(np.float32)

    def chunk(self, index: int) -> Batch:
        """Examples ``512 * index`` up to ``512 * (index + 1)`` (fewer in the last chunk)."""
        rng = np.random.default_rng([self.seed, 1, index])
        # The full chunk is always drawn, so limit() never changes the examples it keeps.
        labels = rng.integers(0, self.num_classes, SYNTHETIC_CHUNK)
        noise = rng.standard_normal((SYNTHETIC_CHUNK, self.class_means.shape[1]), np.float32)
        count = min(SYNTHETIC_CHUNK, self.num_examples - index * SYNTHETIC_CHUNK)
        x = self.class_means[labels[:count]] + noise[:count]
        return (
            torch.from_numpy(x.reshape(count, *self.input_shape)),
            torch.from_numpy(labels[:count].astype(np.int64)),
        )

    @property
    def num_chunks(self) -> int:
        return (self.num_examples + SYNTHETIC_CHUNK - 1) // SYNTHETIC_CHUNK

    def limit(self, max_examples: int | None) -> SyntheticDataset:
        """The first ``max_examples`` examples: the same values as in this dataset."""
        if max_examples is None or max_examples >= self.num_examples:
            return self
        return SyntheticDataset(
            max_examples, self.input_shape, self.num_classes, self.seed, self.name
        )

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Consecutive batches, generated chunk by chunk."""
        return _rebatch((self.chunk(index) for index in range(self.num_chunks)), batch_size)

    def shuffled_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Chunks in a random order, each shuffled within itself.

        The examples are independent draws, so this two-level shuffle gives batches as random
        as a full permutation would, with memory for one chunk index per 512 examples.
        """

        def shuffled_chunks() -> Iterator[Batch]:
            for index in torch.randperm(self.num_chunks, generator=generator).tolist():
                x, y = self.chunk(index)
                within = torch.randperm(len(y), generator=generator)
                yield x[within], y[within]

        return _rebatch(shuffled_chunks(), batch_size)

    def num_batches(self, batch_size: int) -> int:
        return (self.num_examples + batch_size - 1) // batch_size


def synthetic_arrays(
    num_examples: int, input_shape: tuple[int, ...], num_classes: int, seed: int = 0
) -> ArrayDataset:
    """The same examples as ``SyntheticDataset`` with these arguments, held in memory."""
    stream = SyntheticDataset(num_examples, input_shape, num_classes, seed)
    if num_examples == 0:
        return ArrayDataset(
            torch.zeros((0, *stream.input_shape)), torch.zeros(0, dtype=torch.int64), stream.name
        )
    pieces = [stream.chunk(index) for index in range(stream.num_chunks)]
    return ArrayDataset(
        torch.cat([x for x, _ in pieces]), torch.cat([y for _, y in pieces]), stream.name
    )


def _rebatch(pieces: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
    """Batches of exactly ``batch_size`` examples (the last one may be short) from pieces."""
    pending: list[Batch] = []
    num_pending = 0
    for piece in pieces:
        pending.append(piece)
        num_pending += len(piece[1])
        while num_pending >= batch_size:
            taken: list[Batch] = []
            needed = batch_size
            while needed:
                x, y = pending[0]
                if len(y) <= needed:
                    taken.append(pending.pop(0))
                    needed -= len(y)
                else:
                    taken.append((x[:needed], y[:needed]))
                    pending[0] = (x[needed:], y[needed:])
                    needed = 0
            num_pending -= batch_size
            yield _concatenate(taken)
    if num_pending:
        yield _concatenate(pending)


def _concatenate(pieces: list[Batch]) -> Batch:
    if len(pieces) == 1:
        return pieces[0]
    return torch.cat([x for x, _ in pieces]), torch.cat([y for _, y in pieces])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- Fitting a dataset to an architecture ----------------------------------------------------


@dataclass(frozen=True)
class DatasetView:
    """Another dataset (``base``) whose batches a subclass changes on the way out: its name,
    size, classes, kind and batch count are the base's."""

    base: Dataset

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def num_examples(self) -> int:
        return self.base.num_examples

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    @property
    def kind(self) -> DataKind:
        return self.base.kind

    def num_batches(self, batch_size: int) -> int:
        return self.base.num_batches(batch_size)


@dataclass(frozen=True)
class ReshapedDataset(DatasetView):
    """Another dataset whose examples are reshaped batch by batch (same values, same order);
    with ``channels`` > 1, each one-channel example is repeated over that many channels (a
    grayscale image for a model that reads RGB)."""

    input_shape: tuple[int, ...]
    channels: int = 1

    def _shaped(self, x: torch.Tensor, count: int) -> torch.Tensor:
        if self.channels == 1:
            return x.reshape(count, *self.input_shape)
        single = x.reshape(count, 1, *self.input_shape[1:])
        return single.expand(count, *self.input_shape).contiguous()

    def limit(self, max_examples: int | None) -> ReshapedDataset:
        return ReshapedDataset(self.base.limit(max_examples), self.input_shape, self.channels)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for x, y in self.base.batches(batch_size):
            yield self._shaped(x, len(y)), y

    def shuffled_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        for x, y in self.base.shuffled_batches(batch_size, generator):
            yield self._shaped(x, len(y)), y


def fit_to_arch(arch: Architecture, dataset: Dataset) -> Dataset:
    """``dataset`` with examples shaped as ``arch`` expects, or a :class:`DatasetError`.

    The dataset must be of the kind the arch's task reads: labelled examples for a classifier,
    token sequences for a language model. Examples are reshaped when they hold as many values
    as the arch's input (the 64 digits features become 1x8x8 for a conv net), and repeated over
    the channels when they hold one channel's worth of a C x H x W input (the digits as 3x8x8
    for a model that reads RGB); labels must be valid outputs of the arch. Token sequences are
    used as they are: at least 2 tokens (one to predict from, one to predict) and at most the
    arch's sequence length, every token id in its vocabulary.
    """
    _check_kind(arch, dataset)
    if dataset.kind == "tokens":
        return _fit_tokens(arch, dataset)
    target = tuple(arch.input_shape)
    fitted = dataset
    have, want = math.prod(dataset.input_shape), math.prod(target)
    if len(target) >= 3 and target[0] > 1 and have * target[0] == want:
        fitted = ReshapedDataset(dataset, target, channels=target[0])
    elif dataset.input_shape != target:
        if have != want:
            raise DatasetError(
                f"The dataset '{dataset.name}' has examples of shape {dataset.input_shape} "
                f"({have} values) but the {arch.name} arch expects shape {target} ({want} values)."
            )
        if isinstance(dataset, ArrayDataset):
            fitted = ArrayDataset(
                dataset.x.reshape(dataset.num_examples, *target), dataset.y, dataset.name
            )
        else:
            fitted = ReshapedDataset(dataset, target)
    if isinstance(dataset, ArrayDataset) and dataset.num_examples and dataset.y.min() < 0:
        raise DatasetError(f"The dataset '{dataset.name}' has negative labels.")
    if dataset.num_classes > arch.num_classes:
        raise DatasetError(
            f"The dataset '{dataset.name}' has labels up to {dataset.num_classes - 1} but the "
            f"{arch.name} arch has only {arch.num_classes} outputs."
        )
    return fitted


def _check_kind(arch: Architecture, dataset: Dataset) -> None:
    """Refuse labelled data for a language model and token sequences for a classifier."""
    needed = arch.task.data_kind
    if dataset.kind == needed:
        return
    if needed == "tokens":
        raise DatasetError(
            f"The {arch.name} arch is a language model: it predicts the next token of token "
            f"sequences, but the dataset '{dataset.name}' holds labelled examples. Give it a "
            "token dataset: an .npz or .safetensors file with an integer 'x' (N x T token ids) "
            "and no 'y', or 'builtin:markov'."
        )
    raise DatasetError(
        f"The dataset '{dataset.name}' holds token sequences (no labels), which only a language "
        f"model reads; the {arch.name} arch is a classifier and needs examples with labels 'y'."
    )


def _fit_tokens(arch: Architecture, dataset: Dataset) -> Dataset:
    (length,) = dataset.input_shape
    (longest,) = arch.input_shape
    if not 2 <= length <= longest:
        raise DatasetError(
            f"The dataset '{dataset.name}' has sequences of {length} tokens; the {arch.name} "
            f"arch reads sequences of 2 to {longest} tokens (its input_shape)."
        )
    if isinstance(dataset, ArrayDataset) and dataset.num_examples and dataset.x.min() < 0:
        raise DatasetError(
            f"The dataset '{dataset.name}' has negative token ids; tokens are ids 0, 1, ..."
        )
    if dataset.num_classes > arch.num_classes:
        raise DatasetError(
            f"The dataset '{dataset.name}' has token ids up to {dataset.num_classes - 1} but the "
            f"{arch.name} arch's vocabulary has {arch.num_classes} tokens (ids 0 to "
            f"{arch.num_classes - 1}); raise its vocab_size."
        )
    return dataset


def dataset_probe(
    input_shape: tuple[int, ...], num_classes: int, kind: DataKind, name: str
) -> ArrayDataset:
    """One example of ``input_shape`` holding the largest label (a token dataset: the largest
    token), so :func:`fit_to_arch` can check a dataset that is not loaded by its shape alone."""
    largest = max(num_classes - 1, 0)
    if kind == "tokens":
        return token_dataset(torch.full((1, *input_shape), largest), name)
    return ArrayDataset(torch.zeros((1, *input_shape)), torch.tensor([largest]), name)


# --- Uploaded files: .npz and .safetensors ---------------------------------------------------

MAX_NPY_HEADER = 10_000
DEFAULT_MAX_EXPANSION = 64
"""How many times its size on disk an ``.npz`` may declare once decompressed. Real arrays
deflate a few times (scikit-learn's digits as float64: 12.5x); zeros deflate about 1000x."""
NPZ_MAX_MEMBERS = 100
"""Members an ``.npz`` may have: numpy.savez writes one per array, and a dataset needs two."""
DATASET_HEADER_LIMIT = HeaderLimit(
    1024 * 1024, "a dataset's safetensors file holds only the tensors 'x' and 'y'"
)
"""Parsed, a header of many tensors costs about 30 times its size in memory; a dataset needs two."""
CHUNK_VALUES = 2**20
"""Values read, converted and checked at once: a few MiB of memory whatever the file holds."""
NORMALISED_DTYPES = {"x": "F32", "y": "I64"}
"""The normalised copy's safetensors dtypes: what training reads, float32 examples and int64
labels. ``y`` comes first in the data so both arrays start 8-byte aligned. A token dataset's copy
holds one int64 ``x`` (:data:`NORMALISED_TOKEN_DTYPE`) and no ``y``."""
NORMALISED_TOKEN_DTYPE = "I64"

SAFETENSORS_KINDS = {
    **dict.fromkeys(("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"), "f"),
    **dict.fromkeys(("I64", "I32", "I16", "I8"), "i"),
    **dict.fromkeys(("U64", "U32", "U16", "U8"), "u"),
    "BOOL": "b",
}
"""numpy's kind letter of each safetensors dtype that could be numbers; others are refused."""

_UNREADABLE = (
    zipfile.BadZipFile,
    zlib.error,
    OSError,
    EOFError,
    ValueError,
    RuntimeError,  # an encrypted zip member
    NotImplementedError,  # an unsupported compression method or encryption
    SafetensorError,
    struct.error,
)


class BinarySink(Protocol):
    """Where a normalised copy is written, e.g. an open file or the store's incoming blob."""

    def write(self, chunk: bytes, /) -> object: ...


@dataclass(frozen=True)
class DeclaredArray:
    """One array of an uploaded file as its header declares it; none of its data read yet.

    ``kind`` is numpy's letter ('f', 'i', 'u', 'b', ...); ``numpy_dtype`` is how an ``.npz``
    member's bytes are laid out (None in a safetensors file, which torch reads).
    """

    key: str
    shape: tuple[int, ...]
    dtype_name: str
    kind: str
    numpy_dtype: np.dtype | None = None

    @property
    def num_values(self) -> int:
        return math.prod(self.shape)

    @property
    def values_per_row(self) -> int:
        return math.prod(self.shape[1:])


@dataclass(frozen=True)
class ArrayFile:
    """An uploaded ``.npz`` or ``.safetensors`` file of arrays ``x`` and ``y`` (labelled data),
    or of ``x`` alone (token sequences), checked from its headers alone (see
    :func:`inspect_array_file`); its values are read only by :func:`write_normalised` and
    :func:`read_arrays`, a chunk at a time."""

    path: Path
    format: str
    x: DeclaredArray
    y: DeclaredArray | None

    @property
    def kind(self) -> DataKind:
        return "labelled" if self.y is not None else "tokens"

    @property
    def num_examples(self) -> int:
        return self.x.shape[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.x.shape[1:]

    @property
    def normalised_bytes(self) -> int:
        """The size of the normalised copy :func:`write_normalised` writes, to the byte."""
        header = _normalised_header(self.num_examples, self.input_shape, self.kind)
        if self.kind == "tokens":
            return 8 + len(header) + 8 * self.x.num_values
        return 8 + len(header) + 8 * self.num_examples + 4 * self.x.num_values


def inspect_array_file(
    path: Path, max_bytes: int = 2**31, max_expansion: int = DEFAULT_MAX_EXPANSION
) -> ArrayFile:
    """What an ``.npz`` or ``.safetensors`` file declares, told apart by content, or a
    :class:`DatasetError` saying why it cannot be used. A file without ``y`` is token sequences.

    Only the zip directory and the array headers are read, never a value, so this costs no
    memory whatever the file claims. Refused: a file over ``max_bytes``; an ``.npz`` whose
    members declare more than ``max_bytes``, or more than ``max_expansion`` times the file's size,
    once decompressed (a zip bomb); arrays whose shapes declare more data than the file holds;
    dtypes and shapes training could not use.
    """
    try:
        size, sniffed = sniff_file(path)
    except OSError as error:
        raise DatasetError(f"The dataset file could not be read ({error.strerror}).") from error
    if size > max_bytes:
        raise DatasetError(
            f"The dataset file is {size:,} bytes, more than the limit of {max_bytes:,} bytes."
        )
    try:
        if sniffed == "zip":
            x, y, held = _inspect_npz(path, size, max_bytes, max_expansion)
            file_format = "npz"
        elif sniffed == "safetensors":
            x, y, held = _inspect_safetensors(path, size)
            file_format = "safetensors"
        else:
            raise DatasetError(
                "The dataset file is neither an .npz archive nor a safetensors file; save it "
                "with numpy.savez(path, x=x, y=y) or safetensors' save_file({'x': x, 'y': y}, "
                "path)."
            )
    except _UNREADABLE as error:
        raise DatasetError(f"The dataset file is corrupt or unreadable ({error}).") from error
    _check_declared(x, y, held)
    return ArrayFile(path, file_format, x, y)


def write_normalised(arrays: ArrayFile, sink: BinarySink) -> int:
    """Write ``arrays`` as a safetensors file of float32 ``x`` and int64 ``y`` to ``sink``,
    checking every value on the way (finite examples, labels that are class indices); returns
    the number of classes (largest label + 1). Token sequences are written as one int64 ``x``,
    each token checked to be an id; the answer is then the largest token + 1.

    Memory holds one chunk of :data:`CHUNK_VALUES` values at a time, so converting costs the
    same few MiB for any file. :func:`open_normalised` memory-maps the result.
    """
    header = _normalised_header(arrays.num_examples, arrays.input_shape, arrays.kind)
    sink.write(struct.pack("<Q", len(header)) + header)
    if arrays.kind == "tokens":
        largest_token = 0
        for tokens in _checked_tokens(arrays):
            largest_token = max(largest_token, int(tokens.max()))
            sink.write(tokens.tobytes())
        return largest_token + 1
    largest_label = 0
    for labels in _checked_labels(arrays):
        largest_label = max(largest_label, int(labels.max()))
        sink.write(labels.tobytes())
    for values in _checked_values(arrays):
        sink.write(values.tobytes())
    return largest_label + 1


def read_arrays(
    path: Path, max_bytes: int = 2**31, max_expansion: int = DEFAULT_MAX_EXPANSION
) -> ArrayDataset:
    """Arrays ``x`` (as float32) and ``y`` (as int64) of an ``.npz`` or ``.safetensors`` file,
    held in memory, after the checks of :func:`inspect_array_file` and :func:`write_normalised`.

    Nothing is unpickled, and memory holds the converted arrays and one chunk, never a copy of
    the file's own dtype.
    """
    arrays = inspect_array_file(path, max_bytes, max_expansion)
    if arrays.kind == "tokens":
        tokens = np.concatenate(list(_checked_tokens(arrays)))
        return token_dataset(
            torch.from_numpy(tokens.reshape(arrays.num_examples, *arrays.input_shape)), path.stem
        )
    labels = np.empty(arrays.num_examples, dtype=np.int64)
    values = np.empty(arrays.x.num_values, dtype=np.float32)
    for target, chunks in ((labels, _checked_labels(arrays)), (values, _checked_values(arrays))):
        start = 0
        for chunk in chunks:
            target[start : start + len(chunk)] = chunk
            start += len(chunk)
    x = torch.from_numpy(values.reshape(arrays.num_examples, *arrays.input_shape))
    return ArrayDataset(x, torch.from_numpy(labels), path.stem)


def open_normalised(
    path: Path, max_examples: int | None = None, name: str = "arrays"
) -> ArrayDataset:
    """The first ``max_examples`` examples (all when None) of a file :func:`write_normalised`
    wrote, without reading the rest: ``x`` is memory-mapped (pages are read when a batch touches
    them) and only the kept labels are read. A copy without ``y`` is token sequences."""
    try:
        with path.open("rb") as file:
            header = read_safetensors_header(file, path.stat().st_size, DatasetError)
        if "y" not in header.entries:
            return _open_normalised_tokens(path, header, max_examples, name)
        x_entry, y_entry = header.entries["x"], header.entries["y"]
        if [x_entry["dtype"], y_entry["dtype"]] != list(NORMALISED_DTYPES.values()):
            raise ValueError(f"dtypes {x_entry['dtype']} and {y_entry['dtype']}")
        shape = tuple(int(size) for size in x_entry["shape"])
        rows = shape[0] if max_examples is None else min(shape[0], max_examples)
        data_start = header.data_start
        x = np.memmap(
            path,
            dtype=np.float32,
            mode="c",  # copy-on-write: writable for torch, never written back to the blob
            offset=data_start + int(x_entry["data_offsets"][0]),
            shape=(rows, *shape[1:]),
        )
        y = np.fromfile(
            path, dtype="<i8", count=rows, offset=data_start + int(y_entry["data_offsets"][0])
        )
    except (OSError, ValueError, KeyError, TypeError, DatasetError) as error:
        raise DatasetError(
            f"The stored copy of the dataset '{name}' is unreadable ({error}); upload it again."
        ) from error
    return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), name)


def _open_normalised_tokens(
    path: Path, header: SafetensorsHeader, max_examples: int | None, name: str
) -> ArrayDataset:
    """:func:`open_normalised` of a token dataset's copy: its int64 ``x``, memory-mapped."""
    x_entry = header.entries["x"]
    if x_entry["dtype"] != NORMALISED_TOKEN_DTYPE:
        raise ValueError(f"token dtype {x_entry['dtype']}")
    shape = tuple(int(size) for size in x_entry["shape"])
    rows = shape[0] if max_examples is None else min(shape[0], max_examples)
    tokens = np.memmap(
        path,
        dtype="<i8",
        mode="c",  # copy-on-write: writable for torch, never written back to the blob
        offset=header.data_start + int(x_entry["data_offsets"][0]),
        shape=(rows, *shape[1:]),
    )
    return token_dataset(torch.from_numpy(tokens), name)


def _normalised_header(num_examples: int, input_shape: tuple[int, ...], kind: DataKind) -> bytes:
    """The safetensors header of a normalised copy, padded with spaces to 8 bytes."""
    label_bytes = 8 * num_examples
    value_bytes = 4 * num_examples * math.prod(input_shape)
    entries: dict[str, dict[str, object]] = {
        "y": {"dtype": "I64", "shape": [num_examples], "data_offsets": [0, label_bytes]},
        "x": {
            "dtype": "F32",
            "shape": [num_examples, *input_shape],
            "data_offsets": [label_bytes, label_bytes + value_bytes],
        },
    }
    if kind == "tokens":
        token_bytes = 8 * num_examples * math.prod(input_shape)
        entries = {
            "x": {
                "dtype": NORMALISED_TOKEN_DTYPE,
                "shape": [num_examples, *input_shape],
                "data_offsets": [0, token_bytes],
            }
        }
    text = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()
    return text + b" " * (-(8 + len(text)) % 8)


def _check_declared(x: DeclaredArray, y: DeclaredArray | None, held: list[str]) -> None:
    """Refuse, from the headers alone, dtypes and shapes that training could not use (``held``:
    the names of every array in the file)."""
    if y is None:
        _check_declared_tokens(x, held)
        return
    if x.kind not in ("i", "u", "f"):
        raise DatasetError(
            f"The array 'x' has dtype {x.dtype_name}; it must hold real numbers (integers or "
            "floats)."
        )
    if len(x.shape) < 2:
        raise DatasetError(
            f"The array 'x' must be N x features (at least 2 dimensions), got shape {x.shape}."
        )
    if y.kind == "f":
        raise DatasetError(
            f"The array 'y' holds floats ({y.dtype_name}); labels must be integer class indices, "
            "for example y.astype('int64')."
        )
    if y.kind not in ("i", "u"):
        raise DatasetError(f"The array 'y' has dtype {y.dtype_name}; labels must be integers.")
    if y.shape != (x.shape[0],):
        raise DatasetError(
            f"The array 'y' must have shape (N,) with N = {x.shape[0]} examples as in 'x', "
            f"got shape {y.shape}."
        )
    if x.shape[0] == 0:
        raise DatasetError("The dataset holds no examples.")
    if x.values_per_row == 0:
        raise DatasetError(f"The array 'x' has shape {x.shape}: its examples hold no values.")


def _check_declared_tokens(x: DeclaredArray, held: list[str]) -> None:
    """A file without ``y``: token sequences, N x T integer ids."""
    no_y = f"The file has no array 'y' (it holds: {', '.join(held)}), so it is read as token "
    if x.kind not in ("i", "u"):
        raise DatasetError(
            f"{no_y}sequences, but its 'x' has dtype {x.dtype_name}: token ids must be integers "
            "(x.astype('int64')). A labelled dataset needs 'y', one class label per example."
        )
    if len(x.shape) != 2:
        raise DatasetError(
            f"{no_y}sequences, which must be N x T (examples x tokens), got shape {x.shape}."
        )
    if x.shape[0] == 0:
        raise DatasetError("The dataset holds no examples.")
    if x.shape[1] < 2:
        raise DatasetError(
            f"The token sequences have {x.shape[1]} token(s) each; next-token prediction needs "
            "at least 2."
        )


def _checked_tokens(arrays: ArrayFile) -> Iterator[np.ndarray]:
    """A token dataset's ``x`` as int64, a chunk at a time, each checked to hold token ids."""
    return _checked_indices(arrays, arrays.x, "token id", "indices into the vocabulary")


def _checked_labels(arrays: ArrayFile) -> Iterator[np.ndarray]:
    """``y`` as int64, a chunk at a time, each checked to hold class indices."""
    assert arrays.y is not None
    return _checked_indices(arrays, arrays.y, "label", "class indices")


def _checked_indices(
    arrays: ArrayFile, array: DeclaredArray, noun: str, meaning: str
) -> Iterator[np.ndarray]:
    """``array`` as int64, a chunk at a time, each checked to hold indices 0, 1, ... below
    :data:`MAX_NUM_CLASSES` (``noun`` and ``meaning`` say what of, in the sentences)."""
    for chunk in _chunks(arrays, array):
        # Compared in the file's own dtype: a uint64 index past 2**63 must not wrap to negative.
        if chunk.min() < 0:
            raise DatasetError(
                f"The array '{array.key}' has negative {noun}s; {noun}s are {meaning} 0, 1, ..."
            )
        if chunk.max() >= MAX_NUM_CLASSES:
            raise DatasetError(
                f"The array '{array.key}' has {noun} {chunk.max()}; {noun}s are {meaning} below "
                f"{MAX_NUM_CLASSES:,}."
            )
        yield chunk.astype(np.int64)


def _checked_values(arrays: ArrayFile) -> Iterator[np.ndarray]:
    """``x`` as float32 (flattened), a chunk at a time, each checked to be finite."""
    for chunk in _chunks(arrays, arrays.x):
        with np.errstate(over="ignore"):
            values = chunk.astype(np.float32)
        if not np.isfinite(values).all():
            raise DatasetError(
                "The array 'x' has NaN or infinite values (or values too large for float32)."
            )
        yield values


def _chunks(arrays: ArrayFile, array: DeclaredArray) -> Iterator[np.ndarray]:
    """The values of one array, flattened, about :data:`CHUNK_VALUES` at a time."""
    try:
        if arrays.format == "npz":
            yield from _npz_chunks(arrays.path, array)
        else:
            yield from _safetensors_chunks(arrays.path, array)
    except _UNREADABLE as error:
        raise DatasetError(f"The dataset file is corrupt or unreadable ({error}).") from error


# .npz: read member by member with zipfile, never through numpy.load, which would pick a member
# named 'x' over 'x.npy' and read arrays whose headers were never checked.


def _inspect_npz(
    path: Path, size: int, max_bytes: int, max_expansion: int
) -> tuple[DeclaredArray, DeclaredArray | None, list[str]]:
    _check_member_count(path, size)
    with zipfile.ZipFile(path) as archive:
        names = [member.filename for member in archive.infolist()]
        members = {member.filename: member for member in archive.infolist()}
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise DatasetError(
                f"The .npz archive holds several members named {repeated[0]!r}, so which one is "
                "the array is ambiguous; save the arrays again with numpy.savez(path, x=x, y=y)."
            )
        for key in ("x", "y"):
            if key in members:
                raise DatasetError(
                    f"The .npz archive has a member named {key!r}, which numpy.savez never "
                    f"writes (its array '{key}' is '{key}.npy'); save the arrays again with "
                    "numpy.savez(path, x=x, y=y)."
                )
        declared = sum(member.file_size for member in members.values())
        if declared > max_bytes:
            raise DatasetError(
                f"The .npz archive declares {declared:,} bytes once decompressed, more than "
                f"the limit of {max_bytes:,} bytes."
            )
        if declared > max_expansion * size:
            raise DatasetError(
                f"The .npz archive declares {declared:,} bytes once decompressed, more than "
                f"{max_expansion} times its {size:,} bytes, which this service accepts; save it "
                "uncompressed with numpy.savez (not savez_compressed) or as safetensors."
            )
        held = sorted(name.removesuffix(".npy") for name in members)
        declared_arrays: dict[str, DeclaredArray] = {}
        for key in ("x", "y"):
            member = members.get(f"{key}.npy")
            if member is None:
                if key == "y":
                    continue  # token sequences
                raise DatasetError(
                    f"The .npz file has no array '{key}'; it holds: {', '.join(held) or 'nothing'}."
                )
            with archive.open(member) as stream:
                declared_arrays[key] = _npy_header(stream, key, member.file_size)
    return declared_arrays["x"], declared_arrays.get("y"), held


def _check_member_count(path: Path, size: int) -> None:
    """Refuse an archive whose end records declare more than :data:`NPZ_MAX_MEMBERS` members,
    before ``zipfile`` reads its directory whole (an object per member, so an archive of many
    empty members costs it several times its own size; benchmarks/RESULTS.md has a measurement)."""
    with path.open("rb") as file:
        directory = read_zip_directory(file, size)
    if directory is None:
        raise DatasetError("The .npz archive has no zip directory at its end; it is truncated.")
    if directory.members > NPZ_MAX_MEMBERS:
        raise DatasetError(
            f"The .npz archive declares {directory.members:,} members; a dataset needs 'x.npy' "
            f"and 'y.npy', and at most {NPZ_MAX_MEMBERS} are read. Save it with "
            "numpy.savez(path, x=x, y=y)."
        )


def _npy_header(stream: IO[bytes], key: str, stored_bytes: int) -> DeclaredArray:
    """Read an ``.npy`` header; refuse object arrays, layouts that cannot be read a chunk at a
    time, and shapes whose data could not fit in the member's declared size."""
    shape, fortran_order, dtype = _read_npy_header(stream, key)
    if dtype.hasobject:
        raise DatasetError(
            f"The array '{key}' holds Python objects; only numeric arrays are accepted "
            "(nothing is unpickled)."
        )
    if any(size < 0 for size in shape):
        raise DatasetError(f"The array '{key}' declares a negative size in shape {shape}.")
    if math.prod(shape) * dtype.itemsize > stored_bytes:
        raise DatasetError(
            f"The array '{key}' declares shape {shape} of {dtype}, more data than the file holds."
        )
    if fortran_order and sum(size > 1 for size in shape) > 1:
        raise DatasetError(
            f"The array '{key}' is stored in Fortran (column-major) order; save "
            f"numpy.ascontiguousarray({key}) instead."
        )
    return DeclaredArray(key, tuple(shape), str(dtype), dtype.kind, dtype)


def _read_npy_header(stream: IO[bytes], key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) from an ``.npy`` header; leaves ``stream`` at the data."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream, MAX_NPY_HEADER)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream, MAX_NPY_HEADER)
    raise DatasetError(f"The array '{key}' uses .npy format version {version}, not 1 or 2.")


def _npz_chunks(path: Path, array: DeclaredArray) -> Iterator[np.ndarray]:
    assert array.numpy_dtype is not None
    itemsize = array.numpy_dtype.itemsize
    with zipfile.ZipFile(path) as archive, archive.open(f"{array.key}.npy") as stream:
        _read_npy_header(stream, array.key)
        remaining = array.num_values
        while remaining:
            count = min(CHUNK_VALUES, remaining)
            data = stream.read(count * itemsize)
            if len(data) != count * itemsize:
                raise DatasetError(
                    f"The array '{array.key}' is truncated: shape {array.shape} needs "
                    f"{array.num_values * itemsize:,} bytes."
                )
            yield np.frombuffer(data, dtype=array.numpy_dtype)
            remaining -= count


# .safetensors: the header is checked against the file size first, then the library checks that
# the declared shapes fit; rows are read by slices.


def _inspect_safetensors(
    path: Path, size: int
) -> tuple[DeclaredArray, DeclaredArray | None, list[str]]:
    with path.open("rb") as file:
        read_safetensors_header(file, size, DatasetError, DATASET_HEADER_LIMIT)
    declared_arrays: dict[str, DeclaredArray] = {}
    with safe_open(str(path), framework="pt") as file:
        keys = set(file.keys())
        for key in ("x", "y"):
            if key not in keys:
                if key == "y":
                    continue  # token sequences
                held = ", ".join(sorted(keys)) or "nothing"
                raise DatasetError(f"The safetensors file has no tensor '{key}'; it holds: {held}.")
            tensor = file.get_slice(key)
            dtype_name = tensor.get_dtype()
            shape = tuple(tensor.get_shape())
            declared_arrays[key] = DeclaredArray(
                key, shape, dtype_name, SAFETENSORS_KINDS.get(dtype_name, "")
            )
    return declared_arrays["x"], declared_arrays.get("y"), sorted(keys)


def _safetensors_chunks(path: Path, array: DeclaredArray) -> Iterator[np.ndarray]:
    rows_per_chunk = max(1, CHUNK_VALUES // array.values_per_row)
    with safe_open(str(path), framework="pt") as file:
        rows = file.get_slice(array.key)
        for start in range(0, array.shape[0], rows_per_chunk):
            tensor = rows[start : start + rows_per_chunk]
            # numpy has no bfloat16 or float8: those widen to float32 (they are only 'x' values).
            if tensor.is_floating_point() and tensor.dtype not in (
                torch.float16,
                torch.float32,
                torch.float64,
            ):
                tensor = tensor.float()
            yield tensor.numpy().reshape(-1)


# --- Built-in datasets -----------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltinDataset:
    """How the API lists a built-in dataset (``builtin:<name>``)."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    needs_local_files: bool
    description: str
    installing: str = ""
    """For one read from local files: what an operator places in the datasets folder."""
    kind: DataKind = "labelled"
    """``tokens`` for token sequences, whose ``num_classes`` is their vocabulary size."""


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "digits": BuiltinDataset(
        "digits",
        (64,),
        10,
        False,
        "scikit-learn's bundled 8x8 handwritten digits, flattened to 64 features in [0, 1]; "
        "a fixed 80/20 train/test split.",
    ),
    "mnist": BuiltinDataset(
        "mnist",
        (1, 28, 28),
        10,
        True,
        "MNIST handwritten digits, 1x28x28 in [0, 1], read from the idx files "
        "(train-images-idx3-ubyte[.gz], ...) in the configured data folder.",
        "place the four MNIST idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz) in it or in its "
        "mnist/ or MNIST/raw/ folder",
    ),
    "cifar10": BuiltinDataset(
        "cifar10",
        (3, 32, 32),
        10,
        True,
        "CIFAR-10 images, 3x32x32 in [0, 1], read from the binary version "
        "(cifar-10-batches-bin/) in the configured data folder.",
        "unpack cifar-10-binary.tar.gz (the binary version) in it, which gives "
        "cifar-10-batches-bin/ with data_batch_1.bin ... data_batch_5.bin and test_batch.bin",
    ),
    "markov": BuiltinDataset(
        "markov",
        (16,),
        16,
        False,
        "Token sequences of a fixed random Markov chain over 16 tokens, 16 tokens long, for "
        "language models (next-token prediction): 4,096 train and 1,024 test sequences, "
        "generated from fixed seeds; the chain itself predicts the next token with an error "
        "of about 0.5, chance with 0.94.",
        kind="tokens",
    ),
}


def builtin_installed(name: str, root: Path | None) -> bool:
    """Whether every file of built-in ``name``, both splits, is in ``root`` (digits comes with
    scikit-learn, so it always is)."""
    if not BUILTIN_DATASETS[name].needs_local_files:
        return True
    if root is None:
        return False
    if name == "mnist":
        return all(None not in _mnist_files(root, split) for split in ("train", "test"))
    for split in ("train", "test"):
        folder = _cifar_folder(root, split)
        if folder is None or not all((folder / n).is_file() for n in _cifar_names(split)):
            return False
    return True


def load_builtin(name: str, split: str = "train", root: Path | None = None) -> ArrayDataset:
    """A built-in dataset; ``mnist`` and ``cifar10`` are read from the local folder ``root``."""
    if name not in BUILTIN_DATASETS:
        known = ", ".join(sorted(BUILTIN_DATASETS))
        raise DatasetError(f"Unknown built-in dataset {name!r}; the built-ins are {known}.")
    if split not in ("train", "test"):
        raise DatasetError(f"The split must be 'train' or 'test', got {split!r}.")
    if name == "digits":
        return digits(split)
    if name == "markov":
        return markov(split)
    if root is None:
        raise DatasetError(
            f"The {name} dataset is read from a local data folder and none is configured; "
            "nothing is downloaded."
        )
    if name == "mnist":
        return mnist(root, split)
    return cifar10(root, split)


def digits(split: str = "train") -> ArrayDataset:
    """scikit-learn's bundled 8x8 handwritten digits, flattened to 64 features in [0, 1].

    The train/test split is fixed (seeded), so every run sees the same examples.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise DatasetError(f"The split must be 'train' or 'test', got {split!r}.")
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(y))
    num_test = round(len(y) * DIGITS_TEST_FRACTION)
    index = order[num_test:] if split == "train" else order[:num_test]
    return ArrayDataset(torch.from_numpy(x[index]), torch.from_numpy(y[index]), f"digits-{split}")


MARKOV_VOCAB = 16
MARKOV_LENGTH = 16
MARKOV_EXAMPLES = {"train": 4096, "test": 1024}
MARKOV_CONCENTRATION = 0.1
"""Each token's next-token distribution is drawn from Dirichlet(0.1, ..., 0.1): a few likely
successors per token, so the chain is learnable but not deterministic."""
MARKOV_SEED = 0


def markov_chain() -> np.ndarray:
    """The built-in Markov chain's transition matrix (vocab x vocab, rows summing to 1)."""
    rng = np.random.default_rng([MARKOV_SEED, 0])
    return rng.dirichlet(np.full(MARKOV_VOCAB, MARKOV_CONCENTRATION), size=MARKOV_VOCAB)


def markov(split: str = "train") -> ArrayDataset:
    """Token sequences of :func:`markov_chain`: the first token uniform, each next one drawn
    from the current token's row; the same sequences on every run (each split from its own
    fixed seed), generated in milliseconds."""
    if split not in MARKOV_EXAMPLES:
        raise DatasetError(f"The split must be 'train' or 'test', got {split!r}.")
    cumulative = np.cumsum(markov_chain(), axis=1)
    count = MARKOV_EXAMPLES[split]
    rng = np.random.default_rng([MARKOV_SEED, 1 if split == "train" else 2])
    tokens = np.empty((count, MARKOV_LENGTH), dtype=np.int64)
    tokens[:, 0] = rng.integers(0, MARKOV_VOCAB, count)
    draws = rng.random((count, MARKOV_LENGTH - 1))
    for position in range(1, MARKOV_LENGTH):
        rows = cumulative[tokens[:, position - 1]]
        # The first token whose cumulative probability passes the draw (never past the last,
        # should rounding leave a row's total a hair under the draw).
        drawn = (rows <= draws[:, position - 1, None]).sum(axis=1)
        tokens[:, position] = np.minimum(drawn, MARKOV_VOCAB - 1)
    return token_dataset(torch.from_numpy(tokens), f"markov-{split}")


MNIST_MAX_EXAMPLES = 1_000_000
MNIST_SIDE = 28


def mnist(root: Path, split: str = "train") -> ArrayDataset:
    """MNIST from its idx files in ``root``, ``root/MNIST/raw`` or ``root/mnist`` (plain or .gz).

    An idx file is a big-endian header (two zero bytes, a type code 0x08 for unsigned bytes,
    the number of dimensions, then each dimension as a u32) followed by the values.
    """
    prefix = _mnist_prefix(split)
    images_path, labels_path = _mnist_files(root, split)
    if images_path is None or labels_path is None:
        looked = ", ".join(str(folder) for folder in _mnist_folders(root))
        raise DatasetError(
            f"The MNIST {split} files ({prefix}-images-idx3-ubyte and "
            f"{prefix}-labels-idx1-ubyte, optionally .gz) were not found in {looked}; "
            "nothing is downloaded, so place them there first."
        )
    images = _read_idx(images_path, 3)
    labels = _read_idx(labels_path, 1)
    if images.shape[1:] != (MNIST_SIDE, MNIST_SIDE):
        raise DatasetError(
            f"The MNIST file {images_path} holds images of shape {images.shape[1:]}."
        )
    if len(labels) != len(images):
        raise DatasetError(f"The MNIST files hold {len(images)} images but {len(labels)} labels.")
    return _image_dataset(images[:, None], labels, f"mnist-{split}", labels_path)


def _mnist_prefix(split: str) -> str:
    return "train" if split == "train" else "t10k"


def _mnist_folders(root: Path) -> list[Path]:
    return [root, root / "MNIST" / "raw", root / "mnist"]


def _mnist_files(root: Path, split: str) -> tuple[Path | None, Path | None]:
    """The images and labels files of an MNIST split, None where missing."""
    folders, prefix = _mnist_folders(root), _mnist_prefix(split)
    return (
        _find_file(folders, f"{prefix}-images-idx3-ubyte"),
        _find_file(folders, f"{prefix}-labels-idx1-ubyte"),
    )


def _find_file(folders: list[Path], name: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _open_maybe_gzip(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _read_idx(path: Path, num_dims: int) -> np.ndarray:
    try:
        with _open_maybe_gzip(path) as file:
            header = file.read(4)
            if len(header) != 4 or header[:3] != b"\x00\x00\x08" or header[3] != num_dims:
                raise DatasetError(
                    f"The file {path} is not an idx file of unsigned bytes with {num_dims} "
                    "dimensions."
                )
            dims = struct.unpack(f">{num_dims}I", file.read(4 * num_dims))
            if dims[0] > MNIST_MAX_EXAMPLES or math.prod(dims[1:]) > MNIST_SIDE * MNIST_SIDE:
                raise DatasetError(f"The idx file {path} declares an implausible shape {dims}.")
            count = math.prod(dims)
            values = file.read(count)
    except (OSError, EOFError, zlib.error, struct.error) as error:
        raise DatasetError(f"The file {path} is corrupt or unreadable ({error}).") from error
    if len(values) != count:
        raise DatasetError(f"The idx file {path} is truncated: shape {dims} needs {count} bytes.")
    return np.frombuffer(values, dtype=np.uint8).reshape(dims)


CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR_MAX_FILE_BYTES = 100_000 * CIFAR_RECORD_BYTES


def cifar10(root: Path, split: str = "train") -> ArrayDataset:
    """CIFAR-10's binary version: records of one label byte then 3072 pixel bytes.

    The pixels of a record are the red, green and blue 32x32 planes in row-major order, i.e.
    already channels-first. Train is ``data_batch_1.bin`` ... ``data_batch_5.bin``; test is
    ``test_batch.bin``; both looked for in ``root/cifar-10-batches-bin``,
    ``root/cifar10/cifar-10-batches-bin`` and ``root``.
    """
    names = _cifar_names(split)
    folder = _cifar_folder(root, split)
    if folder is None:
        looked = ", ".join(str(f) for f in _cifar_folders(root))
        raise DatasetError(
            f"The CIFAR-10 {split} file {names[0]} was not found in {looked}; nothing is "
            "downloaded, so unpack cifar-10-binary.tar.gz there first."
        )
    records = [_read_cifar_file(folder / name) for name in names]
    images = np.concatenate([record[:, 1:] for record in records]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([record[:, 0] for record in records])
    return _image_dataset(images, labels, f"cifar10-{split}", folder)


def _cifar_names(split: str) -> list[str]:
    if split == "train":
        return [f"data_batch_{index}.bin" for index in range(1, 6)]
    return ["test_batch.bin"]


def _cifar_folders(root: Path) -> list[Path]:
    return [root / "cifar-10-batches-bin", root / "cifar10" / "cifar-10-batches-bin", root]


def _cifar_folder(root: Path, split: str) -> Path | None:
    """The first folder holding the split's first file, None when none does."""
    first = _cifar_names(split)[0]
    return next((f for f in _cifar_folders(root) if (f / first).is_file()), None)


def _read_cifar_file(path: Path) -> np.ndarray:
    try:
        size = path.stat().st_size
        if size > CIFAR_MAX_FILE_BYTES:
            raise DatasetError(f"The CIFAR-10 file {path} is {size:,} bytes, far too large.")
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise DatasetError(f"The CIFAR-10 file {path} is missing.") from error
    except OSError as error:
        raise DatasetError(f"The CIFAR-10 file {path} could not be read ({error}).") from error
    if not data or len(data) % CIFAR_RECORD_BYTES:
        raise DatasetError(
            f"The CIFAR-10 file {path} is not a whole number of {CIFAR_RECORD_BYTES}-byte records."
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD_BYTES)


def _image_dataset(images: np.ndarray, labels: np.ndarray, name: str, where: Path) -> ArrayDataset:
    """Pixels as float32 in [0, 1] (byte / 255) with int64 labels, which must be below 10."""
    if labels.max() >= 10:
        raise DatasetError(f"The labels in {where} go up to {labels.max()}; there are 10 classes.")
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    return ArrayDataset(x, torch.from_numpy(labels.astype(np.int64)), name)
