import contextlib
import gzip
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy_safetensors
from safetensors.torch import save_file as save_torch_safetensors
from sklearn.datasets import load_digits

from llfc_core.archs import ARCHITECTURES, parse_arch
from llfc_core.data import (
    BUILTIN_DATASETS,
    ArrayDataset,
    Dataset,
    ReshapedDataset,
    SyntheticDataset,
    digits,
    fit_to_arch,
    load_builtin,
    read_arrays,
    synthetic_arrays,
)
from llfc_core.errors import DatasetError
from llfc_core.tasks import CLASSIFICATION

MLP_64 = {"name": "mlp", "widths": [64, 32, 10]}


def all_batches(batches) -> tuple[torch.Tensor, torch.Tensor]:
    pieces = list(batches)
    return torch.cat([x for x, _ in pieces]), torch.cat([y for _, y in pieces])


# --- digits ----------------------------------------------------------------------------------


def test_digits_splits_are_disjoint_and_cover_the_1797_examples() -> None:
    train, test = digits("train"), digits("test")
    assert (train.num_examples, test.num_examples) == (1438, 359)
    assert train.input_shape == (64,) and train.num_classes == test.num_classes == 10
    train_rows = {tuple(row) for row in train.x.tolist()}
    test_rows = {tuple(row) for row in test.x.tolist()}
    assert not train_rows & test_rows
    all_rows = {tuple(row) for row in (load_digits().data / 16.0).tolist()}
    assert train_rows | test_rows == all_rows
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64


def test_digits_split_is_the_same_every_time() -> None:
    assert torch.equal(digits("test").x, digits("test").x)


def test_digits_refuses_an_unknown_split() -> None:
    with pytest.raises(DatasetError, match="'train' or 'test'"):
        digits("validation")


def test_array_dataset_satisfies_the_dataset_protocol() -> None:
    assert isinstance(digits("test"), Dataset)
    assert isinstance(SyntheticDataset(10, (4,), 3), Dataset)


# --- synthetic -------------------------------------------------------------------------------


def test_synthetic_batches_are_identical_on_every_pass_and_instance() -> None:
    first = SyntheticDataset(1500, (3, 4, 4), 5, seed=7)
    second = SyntheticDataset(1500, (3, 4, 4), 5, seed=7)
    x1, y1 = all_batches(first.batches(100))
    x2, y2 = all_batches(second.batches(100))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (1500, 3, 4, 4) and x1.dtype == torch.float32
    assert set(y1.tolist()) == set(range(5))


def test_synthetic_examples_do_not_depend_on_batch_size_or_limit() -> None:
    stream = SyntheticDataset(1300, (8,), 4, seed=1)
    x_100, y_100 = all_batches(stream.batches(100))
    x_777, y_777 = all_batches(stream.batches(777))
    assert torch.equal(x_100, x_777) and torch.equal(y_100, y_777)
    x_limited, _ = all_batches(stream.limit(600).batches(128))
    assert torch.equal(x_limited, x_100[:600])
    assert [len(y) for _, y in stream.batches(512)] == [512, 512, 276]


def test_synthetic_seeds_give_different_data() -> None:
    x_a, _ = next(SyntheticDataset(100, (8,), 4, seed=1).batches(100))
    x_b, _ = next(SyntheticDataset(100, (8,), 4, seed=2).batches(100))
    assert not torch.allclose(x_a, x_b)


def test_synthetic_arrays_hold_the_streamed_examples() -> None:
    arrays = synthetic_arrays(1100, (8,), 4, seed=3)
    x, y = all_batches(SyntheticDataset(1100, (8,), 4, seed=3).batches(64))
    assert torch.equal(arrays.x, x) and torch.equal(arrays.y, y)


def test_synthetic_shuffled_batches_permute_the_same_examples_reproducibly() -> None:
    stream = SyntheticDataset(1300, (8,), 4, seed=1)
    x_fixed, y_fixed = all_batches(stream.batches(128))
    x_a, y_a = all_batches(stream.shuffled_batches(128, torch.Generator().manual_seed(5)))
    x_b, _ = all_batches(stream.shuffled_batches(128, torch.Generator().manual_seed(5)))
    x_c, _ = all_batches(stream.shuffled_batches(128, torch.Generator().manual_seed(6)))
    assert torch.equal(x_a, x_b) and not torch.equal(x_a, x_c)
    assert not torch.equal(x_a, x_fixed)
    # Same multiset of examples: sort rows by their first coordinate.
    assert torch.equal(x_a[x_a[:, 0].argsort()], x_fixed[x_fixed[:, 0].argsort()])
    assert torch.equal(y_a.sort().values, y_fixed.sort().values)


def test_synthetic_class_means_separate_the_classes() -> None:
    stream = SyntheticDataset(2000, (16,), 4, seed=0)
    x, y = all_batches(stream.batches(500))
    means = torch.from_numpy(stream.class_means)
    nearest_mean = torch.cdist(x, means).argmin(dim=1)
    accuracy = (nearest_mean == y).float().mean().item()
    assert 0.9 < accuracy < 1.0


def test_a_hundred_million_synthetic_examples_are_never_materialised() -> None:
    started = time.perf_counter()
    huge = SyntheticDataset(10**8, (64,), 10, seed=0)
    assert huge.num_examples == 10**8 and huge.num_batches(128) == 781_250
    batches = huge.batches(128)
    first, second = next(batches), next(batches)
    shuffled = next(huge.shuffled_batches(128, torch.Generator().manual_seed(0)))
    assert first[0].shape == second[0].shape == shuffled[0].shape == (128, 64)
    assert time.perf_counter() - started < 2.0


def test_synthetic_dataset_refuses_bad_arguments() -> None:
    with pytest.raises(DatasetError, match="2 to"):
        SyntheticDataset(10, (4,), 1)
    with pytest.raises(DatasetError, match="positive integers"):
        SyntheticDataset(10, (4, 0), 3)
    with pytest.raises(DatasetError, match="seed"):
        SyntheticDataset(10, (4,), 3, seed=-1)


# --- read_arrays -----------------------------------------------------------------------------


def test_npz_round_trip_converts_x_to_float32_and_y_to_int64(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.float64).reshape(6, 2, 2)
    y = np.array([0, 1, 2, 0, 1, 4], dtype=np.uint8)
    path = tmp_path / "data.npz"
    np.savez_compressed(path, x=x, y=y)
    dataset = read_arrays(path)
    assert dataset.x.dtype == torch.float32 and dataset.y.dtype == torch.int64
    assert torch.equal(dataset.x, torch.from_numpy(x).float())
    assert dataset.y.tolist() == [0, 1, 2, 0, 1, 4]
    assert (dataset.input_shape, dataset.num_classes) == ((2, 2), 5)


def test_safetensors_round_trip_including_bfloat16_x(tmp_path: Path) -> None:
    x = torch.linspace(-2, 2, 30).reshape(10, 3).to(torch.bfloat16)
    y = torch.arange(10, dtype=torch.int32) % 3
    path = tmp_path / "data.safetensors"
    save_torch_safetensors({"x": x, "y": y}, str(path))
    dataset = read_arrays(path)
    assert torch.equal(dataset.x, x.float())
    assert dataset.y.tolist() == (torch.arange(10) % 3).tolist()


def test_the_format_is_sniffed_from_content_not_the_file_name(tmp_path: Path) -> None:
    npz_named_safetensors = tmp_path / "looks.safetensors"
    with npz_named_safetensors.open("wb") as file:
        np.savez(file, x=np.ones((3, 2)), y=np.zeros(3, dtype=np.int64))
    assert read_arrays(npz_named_safetensors).num_examples == 3
    safetensors_named_npz = tmp_path / "looks.npz"
    save_numpy_safetensors(
        {"x": np.ones((4, 2), np.float32), "y": np.zeros(4, np.int64)}, str(safetensors_named_npz)
    )
    assert read_arrays(safetensors_named_npz).num_examples == 4


def write_zeros_bomb(path: Path, num_bytes: int) -> None:
    """An .npz whose x.npy decompresses to num_bytes of zeros, written without holding them."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (num_bytes // 4 // 16, 16)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            zeros = bytes(2**20)
            for _ in range(num_bytes // len(zeros)):
                member.write(zeros)
        with archive.open("y.npy", "w") as member:
            np.save(member, np.zeros(num_bytes // 4 // 16, dtype=np.int64))


def test_a_zip_bomb_is_refused_before_decompression(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    write_zeros_bomb(path, 32 * 2**20)
    assert path.stat().st_size < 2**20
    started = time.perf_counter()
    with pytest.raises(DatasetError, match=r"declares .* bytes once decompressed"):
        read_arrays(path, max_bytes=4 * 2**20)
    assert time.perf_counter() - started < 0.5


def test_an_array_header_claiming_more_data_than_stored_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "liar.npz"
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**9, 1000)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, header)
            member.write(bytes(64))
        with archive.open("y.npy", "w") as member:
            np.save(member, np.zeros(3, dtype=np.int64))
    with pytest.raises(DatasetError, match="more data than the file holds"):
        read_arrays(path)


def test_a_file_larger_than_max_bytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.npz"
    np.savez(path, x=np.ones((100, 10)), y=np.zeros(100, dtype=np.int64))
    with pytest.raises(DatasetError, match="more than the limit"):
        read_arrays(path, max_bytes=1000)


def test_an_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([[1, "a"], [2, "b"]], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DatasetError, match="holds Python objects"):
        read_arrays(path)


def test_float_labels_are_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "floats.npz"
    np.savez(path, x=np.ones((3, 2)), y=np.array([0.0, 1.0, 2.0]))
    with pytest.raises(DatasetError, match=r"labels must be integer class indices"):
        read_arrays(path)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.ones((3, 2)), np.array([0, -1, 2]), "negative labels"),
        (np.ones((3, 2)), np.array([0, 1]), r"shape \(N,\) with N = 3"),
        (np.ones((3, 2)), np.zeros((3, 1), dtype=np.int64), r"shape \(N,\) with N = 3"),
        (np.array([[1.0, np.nan], [0, 0]]), np.array([0, 1]), "NaN or infinite"),
        (np.array([[1.0, np.inf], [0, 0]]), np.array([0, 1]), "NaN or infinite"),
        (np.array([[1e300, 0], [0, 0]]), np.array([0, 1]), "too large for float32"),
        (np.ones((2, 2), dtype=bool), np.array([0, 1]), "real numbers"),
        (np.ones((2, 2), dtype=np.complex64), np.array([0, 1]), "real numbers"),
        (np.array(["a", "b"]).reshape(2, 1), np.array([0, 1]), "real numbers"),
        (np.ones(3), np.array([0, 1, 2]), "at least 2 dimensions"),
        (np.ones((0, 2)), np.zeros(0, dtype=np.int64), "no examples"),
        (np.ones((2, 2)), np.array([0, 10**7]), "class indices below"),
    ],
)
def test_unusable_arrays_are_refused_with_a_sentence(
    tmp_path: Path, x: np.ndarray, y: np.ndarray, message: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(DatasetError, match=message):
        read_arrays(path)


def test_missing_arrays_are_named(tmp_path: Path) -> None:
    npz = tmp_path / "missing.npz"
    np.savez(npz, x=np.ones((2, 2)), labels=np.array([0, 1]))
    # Without 'y' the file is token sequences, which these float values cannot be.
    with pytest.raises(DatasetError, match=r"no array 'y' \(it holds: labels, x\)"):
        read_arrays(npz)
    safetensors = tmp_path / "missing.safetensors"
    save_numpy_safetensors({"y": np.zeros(2, np.int64)}, str(safetensors))
    with pytest.raises(DatasetError, match="no tensor 'x'; it holds: y"):
        read_arrays(safetensors)


def test_files_of_another_format_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("x,y\n1,0\n")
    with pytest.raises(DatasetError, match=r"neither an \.npz archive nor a safetensors file"):
        read_arrays(path)
    with pytest.raises(DatasetError, match="could not be read"):
        read_arrays(tmp_path / "absent.npz")


def test_corrupted_files_only_ever_raise_dataset_error(tmp_path: Path) -> None:
    npz, safetensors = tmp_path / "ok.npz", tmp_path / "ok.safetensors"
    x = np.random.default_rng(0).random((20, 4), dtype=np.float32)
    np.savez_compressed(npz, x=x, y=np.arange(20) % 3)
    save_numpy_safetensors({"x": x, "y": np.arange(20) % 3}, str(safetensors))
    rng = np.random.default_rng(1)
    corrupt = tmp_path / "corrupt"
    for source in (npz, safetensors):
        original = source.read_bytes()
        for trial in range(150):
            damaged = bytearray(original)
            if trial % 2:
                damaged = damaged[: rng.integers(len(damaged))]
            else:
                for position in rng.integers(len(damaged), size=3):
                    damaged[position] = rng.integers(256)
            corrupt.write_bytes(bytes(damaged))
            with contextlib.suppress(DatasetError):
                read_arrays(corrupt)


# --- built-in datasets -----------------------------------------------------------------------


def write_idx(path: Path, values: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([values.ndim]) + struct.pack(f">{values.ndim}I", *values.shape)
    data = header + values.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("layout", ["root", "MNIST/raw", "mnist"])
def test_mnist_idx_files_are_read_from_the_usual_layouts(tmp_path: Path, layout: str) -> None:
    folder = tmp_path if layout == "root" else tmp_path / layout
    folder.mkdir(parents=True, exist_ok=True)
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.array([7, 2, 1]))
    dataset = load_builtin("mnist", "test", root=tmp_path)
    assert dataset.x.shape == (3, 1, 28, 28) and dataset.y.tolist() == [7, 2, 1]
    assert torch.allclose(dataset.x[0, 0], torch.from_numpy(images[0] / 255.0).float())
    assert dataset.name == "mnist-test"


def test_mnist_refuses_mismatched_counts_and_wrong_files(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2))
    with pytest.raises(DatasetError, match="3 images but 2 labels"):
        load_builtin("mnist", "train", root=tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((3, 1)))
    with pytest.raises(DatasetError, match="not an idx file"):
        load_builtin("mnist", "train", root=tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01")
    with pytest.raises(DatasetError, match="truncated"):
        load_builtin("mnist", "train", root=tmp_path)


def write_cifar(path: Path, labels: list[int]) -> np.ndarray:
    pixels = np.random.default_rng(len(labels)).integers(0, 256, (len(labels), 3072))
    records = np.concatenate([np.array(labels)[:, None], pixels], axis=1).astype(np.uint8)
    path.write_bytes(records.tobytes())
    return pixels.reshape(-1, 3, 32, 32)


def test_cifar10_binary_batches_are_read_channels_first(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for index in range(1, 6):
        write_cifar(folder / f"data_batch_{index}.bin", [index, 0])
    pixels = write_cifar(folder / "test_batch.bin", [3, 9, 4])
    test = load_builtin("cifar10", "test", root=tmp_path)
    assert test.x.shape == (3, 3, 32, 32) and test.y.tolist() == [3, 9, 4]
    assert torch.allclose(test.x, torch.from_numpy(pixels / 255.0).float())
    train = load_builtin("cifar10", "train", root=tmp_path)
    assert train.y.tolist() == [1, 0, 2, 0, 3, 0, 4, 0, 5, 0]


def test_cifar10_refuses_missing_batches_and_partial_records(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    write_cifar(folder / "data_batch_1.bin", [1])
    with pytest.raises(DatasetError, match=r"data_batch_2\.bin is missing"):
        load_builtin("cifar10", "train", root=tmp_path)
    (folder / "test_batch.bin").write_bytes(bytes(3000))
    with pytest.raises(DatasetError, match="whole number of 3073-byte records"):
        load_builtin("cifar10", "test", root=tmp_path)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_local_datasets_say_where_they_looked_and_that_nothing_is_downloaded(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(DatasetError, match=rf"{tmp_path}.*nothing is downloaded"):
        load_builtin(name, "train", root=tmp_path)
    with pytest.raises(DatasetError, match="none is configured; nothing is downloaded"):
        load_builtin(name, "train")


def test_load_builtin_refuses_unknown_names_and_splits() -> None:
    with pytest.raises(DatasetError, match="built-ins are cifar10, digits, markov, mnist"):
        load_builtin("imagenet")
    with pytest.raises(DatasetError, match="'train' or 'test'"):
        load_builtin("digits", "val")
    assert load_builtin("digits", "test").num_examples == 359


def test_builtin_descriptions_match_what_is_loaded() -> None:
    described = BUILTIN_DATASETS["digits"]
    loaded = load_builtin("digits")
    assert described.input_shape == loaded.input_shape
    assert described.num_classes == loaded.num_classes
    assert not described.needs_local_files and BUILTIN_DATASETS["mnist"].needs_local_files
    assert BUILTIN_DATASETS["cifar10"].input_shape == (3, 32, 32)


# --- fit_to_arch -----------------------------------------------------------------------------


class Conv8x8:
    """The shape side of an arch taking 1x8x8 images, enough for fit_to_arch."""

    name = "conv"
    input_shape = (1, 8, 8)
    num_classes = 10
    task = CLASSIFICATION


def test_fit_to_arch_leaves_matching_data_alone() -> None:
    data = digits("test")
    assert fit_to_arch(parse_arch(MLP_64), data) is data


def test_fit_to_arch_reshapes_digits_features_into_images() -> None:
    data = digits("test")
    fitted = fit_to_arch(Conv8x8(), data)  # type: ignore[arg-type]
    assert fitted.input_shape == (1, 8, 8)
    x, y = next(fitted.batches(400))
    assert torch.equal(x.reshape(-1, 64), data.x) and torch.equal(y, data.y)


def test_fit_to_arch_reshapes_streamed_batches() -> None:
    stream = SyntheticDataset(700, (64,), 10, seed=2)
    fitted = fit_to_arch(Conv8x8(), stream)  # type: ignore[arg-type]
    assert isinstance(fitted, ReshapedDataset) and fitted.input_shape == (1, 8, 8)
    x, _ = all_batches(fitted.shuffled_batches(300, torch.Generator().manual_seed(0)))
    assert x.shape == (700, 1, 8, 8)
    assert fitted.limit(100).num_examples == 100 and fitted.num_batches(300) == 3


def test_fit_to_arch_names_both_shapes_when_sizes_differ() -> None:
    data = ArrayDataset(torch.zeros(4, 3, 5), torch.zeros(4, dtype=torch.int64), "odd")
    with pytest.raises(DatasetError, match=r"shape \(3, 5\) \(15 values\).*\(64,\) \(64 values\)"):
        fit_to_arch(parse_arch(MLP_64), data)


def test_fit_to_arch_refuses_labels_beyond_the_outputs() -> None:
    arch = parse_arch({"name": "mlp", "widths": [64, 32, 5]})
    with pytest.raises(DatasetError, match="labels up to 9 but the mlp arch has only 5 outputs"):
        fit_to_arch(arch, digits("test"))
    with pytest.raises(DatasetError, match="only 5 outputs"):
        fit_to_arch(arch, SyntheticDataset(10, (64,), 7))
    negative = ArrayDataset(torch.zeros(2, 64), torch.tensor([0, -1]), "negative")
    with pytest.raises(DatasetError, match="negative labels"):
        fit_to_arch(arch, negative)


@pytest.mark.skipif("vgg" not in ARCHITECTURES, reason="the vgg arch is not registered")
def test_fit_to_arch_turns_digits_into_images_for_a_registered_conv_arch() -> None:
    arch = parse_arch({"name": "vgg", "in_channels": 1, "input_size": 8})
    fitted = fit_to_arch(arch, digits("test"))
    assert fitted.input_shape == (1, 8, 8)
