"""Datasets: examples ``x`` (N x ...) with integer class labels ``y`` (N,), read in batches.

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
    def num_classes(self) -> int: ...

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
    """Examples ``x`` (float32, N x ...) with class labels ``y`` (int64, N)."""

    x: torch.Tensor
    y: torch.Tensor
    name: str = "arrays"

    def __post_init__(self) -> None:
        if self.x.ndim < 2:
            raise DatasetError("The array 'x' must have a batch dimension and features (N x ...).")
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
        return ArrayDataset(self.x[:max_examples], self.y[:max_examples], self.name)

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
class ReshapedDataset:
    """Another dataset whose examples are reshaped batch by batch (same values, same order)."""

    base: Dataset
    input_shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def num_examples(self) -> int:
        return self.base.num_examples

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    def limit(self, max_examples: int | None) -> ReshapedDataset:
        return ReshapedDataset(self.base.limit(max_examples), self.input_shape)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for x, y in self.base.batches(batch_size):
            yield x.reshape(len(y), *self.input_shape), y

    def shuffled_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        for x, y in self.base.shuffled_batches(batch_size, generator):
            yield x.reshape(len(y), *self.input_shape), y

    def num_batches(self, batch_size: int) -> int:
        return self.base.num_batches(batch_size)


def fit_to_arch(arch: Architecture, dataset: Dataset) -> Dataset:
    """``dataset`` with examples shaped as ``arch`` expects, or a :class:`DatasetError`.

    Examples are reshaped when they hold as many values as the arch's input (the 64 digits
    features become 1x8x8 for a conv net); labels must be valid outputs of the arch.
    """
    target = tuple(arch.input_shape)
    fitted = dataset
    if dataset.input_shape != target:
        have, want = math.prod(dataset.input_shape), math.prod(target)
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


# --- Uploaded files: .npz and .safetensors ---------------------------------------------------

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
MAX_SAFETENSORS_HEADER = 100 * 2**20
MAX_NPY_HEADER = 10_000


def read_arrays(path: Path, max_bytes: int = 2**31) -> ArrayDataset:
    """Arrays ``x`` and ``y`` from an ``.npz`` or ``.safetensors`` file, told apart by content.

    Nothing is unpickled. Before reading, the sizes the file declares (the zip members'
    uncompressed sizes, each array's shape) are checked against ``max_bytes`` and against
    each other, so a small file cannot make the reader allocate more. ``x`` becomes float32 and
    must be finite; ``y`` must be non-negative integers, one per example.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            head = file.read(9)
    except OSError as error:
        raise DatasetError(f"The dataset file could not be read ({error.strerror}).") from error
    if size > max_bytes:
        raise DatasetError(
            f"The dataset file is {size:,} bytes, more than the limit of {max_bytes:,} bytes."
        )
    if head[:4] in ZIP_MAGICS:
        x, y = _read_npz(path, max_bytes)
    elif _looks_like_safetensors(head, size):
        x, y = _read_safetensors(path)
    else:
        raise DatasetError(
            "The dataset file is neither an .npz archive nor a safetensors file; save it with "
            "numpy.savez(path, x=x, y=y) or safetensors' save_file({'x': x, 'y': y}, path)."
        )
    return checked_arrays(x, y, path.stem)


def checked_arrays(x: np.ndarray, y: np.ndarray, name: str) -> ArrayDataset:
    """An :class:`ArrayDataset` from numpy arrays, refusing what training could not use."""
    if x.dtype.kind not in "iuf":
        raise DatasetError(
            f"The array 'x' has dtype {x.dtype}; it must hold real numbers (integers or floats)."
        )
    if x.ndim < 2:
        raise DatasetError(
            f"The array 'x' must be N x features (at least 2 dimensions), got shape {x.shape}."
        )
    if y.dtype.kind == "f":
        raise DatasetError(
            f"The array 'y' holds floats ({y.dtype}); labels must be integer class indices, "
            "for example y.astype('int64')."
        )
    if y.dtype.kind not in "iu":
        raise DatasetError(f"The array 'y' has dtype {y.dtype}; labels must be integers.")
    if y.shape != (x.shape[0],):
        raise DatasetError(
            f"The array 'y' must have shape (N,) with N = {x.shape[0]} examples as in 'x', "
            f"got shape {y.shape}."
        )
    if x.shape[0] == 0:
        raise DatasetError("The dataset holds no examples.")
    if y.min() < 0:
        raise DatasetError("The array 'y' has negative labels; labels are class indices 0, 1, ...")
    if y.max() >= MAX_NUM_CLASSES:
        raise DatasetError(
            f"The array 'y' has label {y.max()}; labels are class indices below "
            f"{MAX_NUM_CLASSES:,}."
        )
    with np.errstate(over="ignore"):
        x32 = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x32).all():
        raise DatasetError(
            "The array 'x' has NaN or infinite values (or values too large for float32)."
        )
    return ArrayDataset(torch.from_numpy(x32), torch.from_numpy(y.astype(np.int64)), name)


def _read_npz(path: Path, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = {member.filename: member for member in archive.infolist()}
            declared = sum(member.file_size for member in members.values())
            if declared > max_bytes:
                raise DatasetError(
                    f"The .npz archive declares {declared:,} bytes once decompressed, more than "
                    f"the limit of {max_bytes:,} bytes."
                )
            for key in ("x", "y"):
                member = members.get(f"{key}.npy")
                if member is None:
                    held = ", ".join(sorted(name.removesuffix(".npy") for name in members))
                    raise DatasetError(
                        f"The .npz file has no array '{key}'; it holds: {held or 'nothing'}."
                    )
                with archive.open(member) as stream:
                    _check_npy_header(stream, key, member.file_size)
        with np.load(path, allow_pickle=False) as arrays:
            return arrays["x"], arrays["y"]
    except (
        zipfile.BadZipFile,
        zlib.error,
        OSError,
        EOFError,
        ValueError,
        RuntimeError,  # an encrypted member
        NotImplementedError,  # an unsupported compression method or encryption
    ) as error:
        raise DatasetError(f"The .npz file is corrupt or unreadable ({error}).") from error


def _check_npy_header(stream: IO[bytes], key: str, stored_bytes: int) -> None:
    """Refuse object arrays and shapes whose data could not fit in the member's declared size."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream, MAX_NPY_HEADER)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream, MAX_NPY_HEADER)
    else:
        raise DatasetError(f"The array '{key}' uses .npy format version {version}, not 1 or 2.")
    if dtype.hasobject:
        raise DatasetError(
            f"The array '{key}' holds Python objects; only numeric arrays are accepted "
            "(nothing is unpickled)."
        )
    if math.prod(shape) * dtype.itemsize > stored_bytes:
        raise DatasetError(
            f"The array '{key}' declares shape {shape} of {dtype}, more data than the file holds."
        )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with a little-endian u64 header length, then a JSON object."""
    if len(head) < 9:
        return False
    (header_length,) = struct.unpack("<Q", head[:8])
    return header_length <= min(size - 8, MAX_SAFETENSORS_HEADER) and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with safe_open(str(path), framework="pt") as file:
            keys = set(file.keys())
            for key in ("x", "y"):
                if key not in keys:
                    held = ", ".join(sorted(keys)) or "nothing"
                    raise DatasetError(
                        f"The safetensors file has no tensor '{key}'; it holds: {held}."
                    )
            x, y = file.get_tensor("x"), file.get_tensor("y")
    except (SafetensorError, OSError, ValueError, RuntimeError, json.JSONDecodeError) as error:
        raise DatasetError(f"The safetensors file is corrupt or unreadable ({error}).") from error
    return _tensor_to_numpy(x), _tensor_to_numpy(y)


def _tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16 or float8: those widen to float32 (they are only ever 'x' values).
    if tensor.is_floating_point() and tensor.dtype not in (
        torch.float16,
        torch.float32,
        torch.float64,
    ):
        tensor = tensor.float()
    return tensor.numpy()


# --- Built-in datasets -----------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltinDataset:
    """How the API lists a built-in dataset (``builtin:<name>``)."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    needs_local_files: bool
    description: str


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
    ),
    "cifar10": BuiltinDataset(
        "cifar10",
        (3, 32, 32),
        10,
        True,
        "CIFAR-10 images, 3x32x32 in [0, 1], read from the binary version "
        "(cifar-10-batches-bin/) in the configured data folder.",
    ),
}


def load_builtin(name: str, split: str = "train", root: Path | None = None) -> ArrayDataset:
    """A built-in dataset; ``mnist`` and ``cifar10`` are read from the local folder ``root``."""
    if name not in BUILTIN_DATASETS:
        known = ", ".join(sorted(BUILTIN_DATASETS))
        raise DatasetError(f"Unknown built-in dataset {name!r}; the built-ins are {known}.")
    if split not in ("train", "test"):
        raise DatasetError(f"The split must be 'train' or 'test', got {split!r}.")
    if name == "digits":
        return digits(split)
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


MNIST_MAX_EXAMPLES = 1_000_000
MNIST_SIDE = 28


def mnist(root: Path, split: str = "train") -> ArrayDataset:
    """MNIST from its idx files in ``root``, ``root/MNIST/raw`` or ``root/mnist`` (plain or .gz).

    An idx file is a big-endian header (two zero bytes, a type code 0x08 for unsigned bytes,
    the number of dimensions, then each dimension as a u32) followed by the values.
    """
    prefix = "train" if split == "train" else "t10k"
    folders = [root, root / "MNIST" / "raw", root / "mnist"]
    images_path = _find_file(folders, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_file(folders, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        looked = ", ".join(str(folder) for folder in folders)
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
    names = (
        [f"data_batch_{index}.bin" for index in range(1, 6)]
        if split == "train"
        else ["test_batch.bin"]
    )
    folders = [root / "cifar-10-batches-bin", root / "cifar10" / "cifar-10-batches-bin", root]
    folder = next((f for f in folders if (f / names[0]).is_file()), None)
    if folder is None:
        looked = ", ".join(str(f) for f in folders)
        raise DatasetError(
            f"The CIFAR-10 {split} file {names[0]} was not found in {looked}; nothing is "
            "downloaded, so unpack cifar-10-binary.tar.gz there first."
        )
    records = [_read_cifar_file(folder / name) for name in names]
    images = np.concatenate([record[:, 1:] for record in records]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([record[:, 0] for record in records])
    return _image_dataset(images, labels, f"cifar10-{split}", folder)


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
