"""Hostile and broken inputs against a running `llfc serve`: each is refused with a 4xx whose
`detail` is a sentence, and the server keeps serving afterwards (checked after every test).
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import re
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from support.api import (
    mlp_arch,
    mlp_state,
    safetensors_file,
    submit,
    torch_file,
    upload_checkpoint,
    upload_mlp,
)
from support.security import MAX_UPLOAD_BYTES, GuardedService, assert_problem

from llfc_core.checkpoints import MAX_NAMES_IN_ERROR_FIELDS, safetensors_bytes

SMALL = [64, 16, 10]


@pytest.fixture(autouse=True)
def server_keeps_serving(guarded: GuardedService) -> Iterator[None]:
    """After every hostile request the process is alive and GET /healthz answers 200."""
    yield
    assert guarded.is_serving(), guarded.process.log()[-3000:]


@pytest.fixture(scope="module")
def pair(alice: httpx.Client) -> tuple[str, str]:
    """Two valid checkpoints of the 64-16-10 MLP, for the job submissions below."""
    return upload_mlp(alice, SMALL, 11), upload_mlp(alice, SMALL, 12)


def npz_file(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def upload_dataset(
    http: httpx.Client, content: bytes, filename: str = "data.npz", name: str | None = None
) -> httpx.Response:
    data = {"name": name} if name is not None else {}
    return http.post("/v1/datasets", files={"file": (filename, content)}, data=data)


# --- Files whose loading would run code --------------------------------------------------------


class RunsCodeWhenUnpickled:
    """Unpickling this object runs ``exec``, which creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def torch_zip_payload(marker: Path) -> bytes:
    state: dict[str, Any] = dict(mlp_state(SMALL, 1))
    state["0.weight"] = RunsCodeWhenUnpickled(marker)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def legacy_pickle_payload(marker: Path) -> bytes:
    return pickle.dumps({"0.weight": RunsCodeWhenUnpickled(marker)}, protocol=2)


@pytest.mark.parametrize(
    ("make_payload", "load_unsafely", "refusal"),
    [
        (
            torch_zip_payload,
            lambda data: torch.load(io.BytesIO(data), weights_only=False),
            "not loaded for safety",
        ),
        (legacy_pickle_payload, pickle.loads, "legacy (pre-1.6) format"),
    ],
    ids=["torch-zip", "legacy-pickle"],
)
def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_nothing_runs(
    alice: httpx.Client, tmp_path: Path, make_payload: Any, load_unsafely: Any, refusal: str
) -> None:
    # The control proves the payload is live: loaded the unsafe way, it does create its marker.
    control = tmp_path / "control-ran"
    load_unsafely(make_payload(control))
    assert control.exists()

    marker = tmp_path / "server-ran"
    response = upload_checkpoint(alice, make_payload(marker), mlp_arch(SMALL))
    assert_problem(response, 422, refusal)
    assert not marker.exists()


def test_an_npz_whose_object_array_runs_code_is_refused_and_nothing_runs(
    alice: httpx.Client, tmp_path: Path
) -> None:
    control = tmp_path / "control-ran"
    labels = np.zeros(1, dtype=np.int64)
    with np.load(io.BytesIO(npz_file(x=_object_array(control), y=labels)), allow_pickle=True) as z:
        z["x"]
    assert control.exists()

    marker = tmp_path / "server-ran"
    response = upload_dataset(alice, npz_file(x=_object_array(marker), y=labels))
    assert_problem(response, 422, "holds Python objects")
    assert not marker.exists()


def _object_array(marker: Path) -> np.ndarray:
    array = np.empty((1, 1), dtype=object)
    array[0, 0] = RunsCodeWhenUnpickled(marker)
    return array


# --- Damaged safetensors ------------------------------------------------------------------------


def _safetensors_with_header(
    header: dict[str, Any], data: bytes, claimed: int | None = None
) -> bytes:
    text = json.dumps(header).encode()
    length = len(text) if claimed is None else claimed
    return length.to_bytes(8, "little") + text + data


def test_a_truncated_safetensors_file_is_refused(alice: httpx.Client) -> None:
    whole = safetensors_file(mlp_state(SMALL, 2))
    response = upload_checkpoint(alice, whole[: len(whole) // 2], mlp_arch(SMALL), "m.safetensors")
    assert_problem(response, 422, "truncated")


def test_a_safetensors_header_that_is_not_json_is_refused(alice: httpx.Client) -> None:
    content = (20).to_bytes(8, "little") + b"{this is not json!!}" + bytes(64)
    response = upload_checkpoint(alice, content, mlp_arch(SMALL), "m.safetensors")
    assert_problem(response, 422, "not valid JSON")


def test_a_header_longer_than_the_file_is_refused(alice: httpx.Client) -> None:
    content = _safetensors_with_header({}, bytes(32), claimed=10**6)
    response = upload_checkpoint(alice, content, mlp_arch(SMALL), "m.safetensors")
    assert_problem(response, 422, "claims 1,000,000 bytes")


def test_a_tensor_that_ends_past_the_end_of_the_file_is_refused(alice: httpx.Client) -> None:
    header = {"0.weight": {"dtype": "F32", "shape": [16, 64], "data_offsets": [0, 16 * 64 * 4]}}
    response = upload_checkpoint(
        alice, _safetensors_with_header(header, bytes(100)), mlp_arch(SMALL), "m.safetensors"
    )
    assert_problem(response, 422, "'0.weight' ends at data byte 4,096", "only 100 data bytes")


def test_a_header_claiming_exabytes_is_refused_without_reading(alice: httpx.Client) -> None:
    content = _safetensors_with_header({}, b"", claimed=2**63)
    response = upload_checkpoint(alice, content, mlp_arch(SMALL), "m.safetensors")
    assert_problem(response, 422, "claims 9,223,372,036,854,775,808 bytes", "check that 'arch'")


def test_a_header_of_many_empty_tensors_is_refused_before_it_is_parsed(
    alice: httpx.Client,
) -> None:
    # A million such entries (59 MB, under the default upload cap) cost the API about 1.9 GB
    # once parsed, and a 10 MB error body listing every unexpected name; 10,000 fit this
    # service's 1 MiB cap and are already far past what the arch's 4 tensors can need.
    header = {f"k{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(10**4)}
    content = _safetensors_with_header(header, b"")
    response = upload_checkpoint(alice, content, mlp_arch(SMALL), "m.safetensors")
    assert_problem(response, 422, "a checkpoint of the mlp arch has", "check that 'arch'")
    assert len(response.content) < 4096


def test_a_mismatch_error_lists_a_bounded_number_of_names(alice: httpx.Client) -> None:
    tensors = {f"extra.{i}": torch.zeros(1) for i in range(300)}
    response = upload_checkpoint(
        alice, safetensors_bytes(tensors), mlp_arch(SMALL), "extra.safetensors"
    )
    assert_problem(response, 422, "unexpected extra.0")
    assert len(response.json()["unexpected"]) == MAX_NAMES_IN_ERROR_FIELDS


def test_bytes_of_no_known_format_are_refused(alice: httpx.Client) -> None:
    response = upload_checkpoint(alice, b"GIF89a not a model", mlp_arch(SMALL))
    assert_problem(response, 422, "neither a safetensors file nor a PyTorch state dict")


# --- Zip bomb -----------------------------------------------------------------------------------

BOMB_ROWS = 25_000
BOMB_FEATURES = 1_000
"""25,000 x 1,000 float32 zeros: 100 MB once decompressed, about 100 kB deflated."""


def zip_bomb_npz() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f4", "fortran_order": False, "shape": (BOMB_ROWS, BOMB_FEATURES)}
            np.lib.format.write_array_header_1_0(member, header)
            zero_row_block = bytes(4 * BOMB_FEATURES * 1_000)
            for _ in range(BOMB_ROWS // 1_000):
                member.write(zero_row_block)
        y = io.BytesIO()
        np.save(y, np.zeros(BOMB_ROWS, dtype=np.int64))
        archive.writestr("y.npy", y.getvalue())
    return buffer.getvalue()


def test_a_zip_bomb_npz_is_refused_before_decompressing(alice: httpx.Client) -> None:
    bomb = zip_bomb_npz()
    assert len(bomb) < MAX_UPLOAD_BYTES // 2  # small on the wire, so only the declared size counts
    started = time.monotonic()
    response = upload_dataset(alice, bomb)
    elapsed = time.monotonic() - started
    assert_problem(response, 422, "once decompressed", f"limit of {MAX_UPLOAD_BYTES:,} bytes")
    assert elapsed < 5.0


def deflated_zeros_npz(num_examples: int) -> bytes:
    """x (N x 1) and y (N,) of uint8 zeros, deflated about 500 times."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", npy_bytes(np.zeros((num_examples, 1), dtype=np.uint8)))
        archive.writestr("y.npy", npy_bytes(np.zeros(num_examples, dtype=np.uint8)))
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_an_npz_declaring_far_more_than_its_own_size_is_refused(alice: httpx.Client) -> None:
    # Under the upload cap once decompressed, so only the bound relative to the file catches it
    # (the 389 KB file declaring 200M examples of issue 10 is this, scaled to the 1 MiB cap).
    num_examples = 400_000
    declared_bytes = 2 * num_examples
    bomb = deflated_zeros_npz(num_examples)
    assert declared_bytes < MAX_UPLOAD_BYTES
    assert declared_bytes > 64 * len(bomb)
    response = upload_dataset(alice, bomb)
    assert_problem(response, 422, "more than 64 times its", "numpy.savez")


def test_an_npz_with_a_member_x_beside_x_npy_is_refused_unread(alice: httpx.Client) -> None:
    huge = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        huge, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)}
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", npy_bytes(np.ones((2, 64), dtype=np.float32)))
        archive.writestr("y.npy", npy_bytes(np.array([0, 1])))
        archive.writestr("x", huge.getvalue())  # numpy.load reads this one for 'x': 8 TiB
    response = upload_dataset(alice, buffer.getvalue())
    assert_problem(response, 422, "member named 'x'", "numpy.savez(path, x=x, y=y)")


@pytest.mark.parametrize(
    ("train_dataset", "phrase"),
    [
        ("builtin:../../etc/passwd", "is not a dataset id"),
        ("x" * 10_000, "is not a dataset id"),
        (["builtin:digits"], "'train_dataset' must be a dataset id"),
        ("builtin:mnist", "is not installed on this service"),
    ],
    ids=["path", "long", "list", "not-installed"],
)
def test_a_train_dataset_that_is_no_usable_dataset_is_refused(
    alice: httpx.Client, pair: tuple[str, str], train_dataset: Any, phrase: str
) -> None:
    body = {
        "kind": "analyze",
        "model_a": pair[0],
        "model_b": pair[1],
        "dataset": "builtin:digits",
        "params": {"train_dataset": train_dataset},
    }
    assert_problem(submit(alice, body), 422, phrase)


# --- Values and types that do not fit ---------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [("0.weight", float("nan")), ("2.bias", float("inf")), ("0.bias", float("-inf"))],
)
def test_nan_and_infinite_weights_are_refused_naming_the_tensor(
    alice: httpx.Client, key: str, value: float
) -> None:
    """Non-finite weights are refused, not flagged: a diverged model makes every interpolation,
    barrier and matching result NaN, and refusing at upload names the tensor while the user still
    knows where the file came from, instead of a failed or meaningless job later."""
    state = mlp_state(SMALL, 3)
    state[key].view(-1)[0] = value
    response = upload_checkpoint(alice, safetensors_file(state), mlp_arch(SMALL), "m.safetensors")
    assert_problem(response, 422, "NaN or infinite", key)


def test_float64_weights_too_large_for_float32_are_refused(alice: httpx.Client) -> None:
    state = {key: value.double() for key, value in mlp_state(SMALL, 4).items()}
    state["2.weight"][0, 0] = 1e300
    response = upload_checkpoint(alice, torch_file(state), mlp_arch(SMALL))
    assert_problem(response, 422, "too large for float32", "2.weight")


@pytest.mark.parametrize(
    ("dtype", "as_torch"),
    [(torch.int32, False), (torch.bool, False), (torch.int64, True), (torch.complex64, True)],
    ids=["int32", "bool", "int64", "complex64"],
)
def test_weights_of_a_wrong_dtype_are_refused_naming_the_dtype(
    alice: httpx.Client, dtype: torch.dtype, as_torch: bool
) -> None:
    state = mlp_state(SMALL, 5)
    state["2.weight"] = state["2.weight"].to(dtype)
    content = torch_file(state) if as_torch else safetensors_file(state)
    response = upload_checkpoint(alice, content, mlp_arch(SMALL), "m.pt" if as_torch else "m.st")
    assert_problem(response, 422, f"2.weight ({dtype}, the model needs floating point)")


def test_a_value_that_is_not_a_tensor_is_refused(alice: httpx.Client) -> None:
    state: dict[str, Any] = dict(mlp_state(SMALL, 6))
    state["0.bias"] = [0.0] * 16
    buffer = io.BytesIO()
    torch.save(state, buffer)
    response = upload_checkpoint(alice, buffer.getvalue(), mlp_arch(SMALL))
    assert_problem(response, 422, "0.bias", "not tensors")


def test_mismatched_shapes_are_refused_naming_each_tensor(alice: httpx.Client) -> None:
    state = mlp_state([32, 16, 10], 7)
    state["extra.weight"] = torch.zeros(3)
    del state["2.bias"]
    response = upload_checkpoint(alice, safetensors_file(state), mlp_arch(SMALL), "m.st")
    problem = assert_problem(response, 422, "0.weight (expected [16, 64], got [16, 32])")
    assert problem["mis_shaped"] == ["0.weight"]
    assert problem["missing"] == ["2.bias"]
    assert problem["unexpected"] == ["extra.weight"]


# --- Architectures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch_text", "phrase"),
    [
        ('{"name": "transformer", "layers": 12}', "Unknown arch name 'transformer'"),
        ('{"name": "mlp", "widths": [64, 10], "depth": 3}', "depth"),
        ("[64, 16, 10]", "must be a JSON object"),
        ("{'name': 'mlp'}", "not valid JSON"),
        ("", "needs an 'arch' field"),
    ],
    ids=["unknown-name", "unknown-field", "not-an-object", "not-json", "empty"],
)
def test_an_unknown_or_malformed_arch_is_refused(
    alice: httpx.Client, arch_text: str, phrase: str
) -> None:
    response = alice.post(
        "/v1/checkpoints",
        files={"file": ("m.pt", torch_file(mlp_state(SMALL, 8)))},
        data={"arch": arch_text},
    )
    assert_problem(response, 422, phrase)


def _peak_rss_kib(guarded: GuardedService) -> int:
    status = Path(f"/proc/{guarded.process.popen.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("widths", "phrase"),
    [
        ([64, 10**9, 10], "from 1 to 1,000,000, got 1000000000"),
        ([64, 10**30, 10], "from 1 to 1,000,000"),
        ([784, 1_000_000, 1_000_000, 1_000_000, 10], "more than the limit of 200,000,000"),
    ],
    ids=["width-1e9", "width-1e30", "2e12-params"],
)
def test_absurd_sizes_are_refused_at_once_without_allocating(
    alice: httpx.Client, guarded: GuardedService, widths: list[int], phrase: str
) -> None:
    peak_before = _peak_rss_kib(guarded)
    started = time.monotonic()
    upload = upload_checkpoint(alice, torch_file(mlp_state(SMALL, 9)), mlp_arch(widths))
    train = submit(
        alice,
        {"kind": "train", "dataset": "builtin:digits", "params": {"arch": mlp_arch(widths)}},
    )
    elapsed = time.monotonic() - started
    assert_problem(upload, 422, phrase)
    assert_problem(train, 422, phrase)
    assert elapsed < 2.0
    # Even the smallest of these models would need gigabytes; the peak did not move by 100 MB.
    assert _peak_rss_kib(guarded) - peak_before < 100 * 1024


# --- Job submissions ----------------------------------------------------------------------------


def test_a_dataset_whose_examples_do_not_fit_the_arch_is_refused_at_submission(
    alice: httpx.Client, pair: tuple[str, str]
) -> None:
    rng = np.random.default_rng(0)
    narrow = upload_dataset(
        alice, npz_file(x=rng.random((20, 32), dtype=np.float32), y=np.arange(20) % 10)
    )
    assert narrow.status_code == 201, narrow.text
    model_a, model_b = pair
    for kind, params in (("analyze", {}), ("match", {"method": "activation"})):
        response = submit(
            alice,
            {
                "kind": kind,
                "model_a": model_a,
                "model_b": model_b,
                "dataset": narrow.json()["id"],
                "params": params,
            },
        )
        assert_problem(response, 422, "has examples of shape (32,)", "expects shape (64,)")


def test_a_dataset_with_more_classes_than_the_arch_outputs_is_refused(
    alice: httpx.Client, pair: tuple[str, str]
) -> None:
    rng = np.random.default_rng(1)
    many_classes = upload_dataset(
        alice, npz_file(x=rng.random((30, 64), dtype=np.float32), y=np.arange(30))
    )
    assert many_classes.status_code == 201, many_classes.text
    body = {"kind": "analyze", "model_a": pair[0], "model_b": pair[1]}
    response = submit(alice, {**body, "dataset": many_classes.json()["id"]})
    assert_problem(response, 422, "labels up to 29", "only 10 outputs")


@pytest.mark.parametrize(
    ("kind", "params", "phrase"),
    [
        ("analyze", {"alphas": [0.0, -0.1, 1.0]}, "from 0 to 1, got -0.1"),
        ("analyze", {"alphas": [0.0, 1.5]}, "from 0 to 1, got 1.5"),
        ("analyze", {"llfc_alphas": [2]}, "from 0 to 1, got 2"),
        ("analyze", {"alphas": [i / 101 for i in range(102)]}, "at most 101 values"),
        ("interpolate", {"alpha": 1.01}, "from 0 to 1, got 1.01"),
        ("interpolate", {"alpha": "0.5"}, "from 0 to 1, got '0.5'"),
        ("interpolate", {"alpha": True}, "from 0 to 1, got True"),
    ],
    ids=["negative", "above-one", "llfc-alpha", "too-many", "interp-above", "string", "bool"],
)
def test_alphas_outside_zero_one_or_too_many_are_refused(
    alice: httpx.Client, pair: tuple[str, str], kind: str, params: dict[str, Any], phrase: str
) -> None:
    body = {"kind": kind, "model_a": pair[0], "model_b": pair[1], "params": params}
    if kind == "analyze":
        body["dataset"] = "builtin:digits"
    assert_problem(submit(alice, body), 422, phrase)


def test_a_nan_alpha_in_raw_json_is_refused(alice: httpx.Client, pair: tuple[str, str]) -> None:
    # Python's JSON parser accepts the NaN literal; the service's bounded parser refuses it, so it
    # reaches neither the engine nor the database.
    text = (
        f'{{"kind": "interpolate", "model_a": "{pair[0]}", "model_b": "{pair[1]}", '
        '"params": {"alpha": NaN}}'
    )
    response = alice.post("/v1/jobs", content=text, headers={"Content-Type": "application/json"})
    assert_problem(response, 422, "holds NaN, which is not a JSON number")


@pytest.mark.parametrize(
    ("content", "content_type", "status", "phrase"),
    [
        (b"kind=match", "application/json", 422, "not valid JSON"),
        (b"\xff\xfe{", "application/json", 400, "could not be read as UTF-8 JSON"),
        (b'["match"]', "application/json", 422, "must be a JSON object"),
        (b"kind=match&model_a=x", "application/x-www-form-urlencoded", 415, "not JSON"),
        (b"", "application/json", 422, "JSON object"),
    ],
    ids=["not-json", "not-utf8", "json-array", "form-encoded", "empty"],
)
def test_a_job_body_that_is_not_a_json_object_is_refused(
    alice: httpx.Client, content: bytes, content_type: str, status: int, phrase: str
) -> None:
    response = alice.post("/v1/jobs", content=content, headers={"Content-Type": content_type})
    assert_problem(response, status, phrase, "application/json")


def test_an_unknown_job_kind_is_refused_listing_the_kinds(alice: httpx.Client) -> None:
    response = submit(alice, {"kind": "mine-bitcoin", "model_a": "a", "model_b": "b"})
    assert_problem(
        response, 422, "'kind'", "'match', 'interpolate', 'analyze', 'train', 'sweep' or 'merge'"
    )


def test_an_unknown_job_field_is_refused_naming_it(alice: httpx.Client) -> None:
    response = submit(alice, {"kind": "match", "model_a": "a", "model_b": "b", "priority": 9})
    assert_problem(response, 422, "'priority'")


def test_an_upload_sent_as_json_is_refused_with_415(alice: httpx.Client) -> None:
    response = alice.post("/v1/checkpoints", json={"file": "AAAA", "arch": mlp_arch(SMALL)})
    assert_problem(response, 415, "multipart/form-data")


def test_a_multipart_body_cut_short_is_refused(alice: httpx.Client) -> None:
    body = b'--edge\r\nContent-Disposition: form-data; name="file"; filename="m.pt"\r\n\r\nPK\x03'
    response = alice.post(
        "/v1/checkpoints",
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=edge"},
    )
    assert_problem(response, 422, "ended before its closing boundary")


# --- Oversize uploads ---------------------------------------------------------------------------


def _incoming_files(guarded: GuardedService) -> list[Path]:
    return list((guarded.data_dir / "blobs" / "incoming").iterdir())


def test_an_upload_over_the_cap_is_413_and_leaves_no_partial_file(
    alice: httpx.Client, guarded: GuardedService
) -> None:
    oversize = bytes(MAX_UPLOAD_BYTES + 1)
    for route in ("/v1/checkpoints", "/v1/datasets"):
        response = alice.post(
            route, files={"file": ("big.pt", oversize)}, data={"arch": json.dumps(SMALL)}
        )
        assert_problem(response, 413, f"limit of {MAX_UPLOAD_BYTES:,} bytes")
    assert _incoming_files(guarded) == []


def test_a_chunked_upload_is_cut_off_at_the_cap(
    alice: httpx.Client, guarded: GuardedService
) -> None:
    """Without a Content-Length the server counts bytes as they arrive and stops at the cap."""
    head = b'--edge\r\nContent-Disposition: form-data; name="file"; filename="m.pt"\r\n\r\n'

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(4):  # 1.25 MiB in all, past the 1 MiB cap
            yield bytes(320 * 1024)
        yield b"\r\n--edge--\r\n"

    response = alice.post(
        "/v1/datasets",
        content=body(),
        headers={"Content-Type": "multipart/form-data; boundary=edge"},
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, f"limit of {MAX_UPLOAD_BYTES:,} bytes")
    assert _incoming_files(guarded) == []


# --- File names ---------------------------------------------------------------------------------


def _post_raw_multipart(
    http: httpx.Client, route: str, filename: bytes, content: bytes, widths: list[int] | None = None
) -> httpx.Response:
    """A multipart upload whose file name goes out byte for byte (httpx would escape a NUL)."""
    parts = [
        b'--edge\r\nContent-Disposition: form-data; name="file"; filename="'
        + filename
        + b'"\r\n\r\n'
        + content
        + b"\r\n"
    ]
    if widths is not None:
        arch = json.dumps(mlp_arch(widths)).encode()
        parts.append(
            b'--edge\r\nContent-Disposition: form-data; name="arch"\r\n\r\n' + arch + b"\r\n"
        )
    return http.post(
        route,
        content=b"".join(parts) + b"--edge--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=edge"},
    )


def _files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


@pytest.mark.parametrize(
    ("seed", "template"),
    [
        (101, "../../../../../../tmp/{tag}.pt"),
        (102, "..\\..\\..\\{tag}.pt"),
        (103, "/etc/{tag}.pt"),
        (104, "....//....//{tag}\x00.pt"),
    ],
    ids=["dot-dot-slash", "backslashes", "absolute", "nul-and-doubled-dots"],
)
def test_a_file_name_with_path_parts_is_kept_only_as_a_label(
    alice: httpx.Client, guarded: GuardedService, seed: int, template: str
) -> None:
    tag = f"llfc-escape-{uuid.uuid4().hex}"
    outside = guarded.data_dir.parent
    before = _files_under(outside)
    filename = template.format(tag=tag).encode()
    checkpoint = torch_file(mlp_state(SMALL, seed))
    response = _post_raw_multipart(alice, "/v1/checkpoints", filename, checkpoint, SMALL)
    assert response.status_code == 201, response.text
    assert response.json()["name"] == tag
    examples = npz_file(x=np.full((2, 64), seed, np.float32), y=np.array([0, 1]))
    dataset = _post_raw_multipart(alice, "/v1/datasets", filename, examples)
    assert dataset.status_code == 201, dataset.text
    assert dataset.json()["name"] == tag

    # Nothing appeared anywhere under the temporary folder but blobs named by their sha256.
    for path in _files_under(outside) - before:
        assert tag not in str(path)
        relative = path.relative_to(guarded.data_dir / "blobs")
        assert re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{64}", relative.as_posix()), path
    assert not Path(f"/tmp/{tag}.pt").exists() and not Path(f"/etc/{tag}.pt").exists()


def test_a_name_field_with_path_parts_is_stored_as_plain_text(alice: httpx.Client) -> None:
    content = torch_file(mlp_state(SMALL, 77))
    response = upload_checkpoint(alice, content, mlp_arch(SMALL), name="../../etc/passwd\x00\n")
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "../../etc/passwd"


# --- Text that the database must never see ------------------------------------------------------

NUL_CURSOR = (
    base64.urlsafe_b64encode(json.dumps(["2024-01-01T00:00:00+00:00", "job_\x00"]).encode())
    .decode()
    .rstrip("=")
)
"""A cursor shaped like the service's own, whose id holds a NUL byte."""


@pytest.mark.parametrize(
    "path",
    [
        "/v1/checkpoints/ckpt_%00",
        "/v1/datasets/ds%0A1",
        "/v1/jobs/job_%00/metrics",
        "/v1/jobs?cursor=" + NUL_CURSOR,
        "/v1/jobs/job_x/metrics?layer=%00",
    ],
    ids=["nul-id", "newline-id", "nul-job-id", "nul-in-cursor", "nul-filter"],
)
def test_control_characters_in_ids_cursors_and_filters_are_refused(
    alice: httpx.Client, path: str
) -> None:
    assert_problem(alice.get(path), 422)


def test_a_json_body_over_one_mebibyte_is_413_declared_or_streamed(alice: httpx.Client) -> None:
    padding = "a" * (2 * 1024 * 1024)
    body = json.dumps({"kind": "analyze", "params": {"padding": padding}}).encode()
    declared = alice.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert_problem(declared, 413, "larger than 1,048,576 bytes")

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    streamed = alice.post(
        "/v1/jobs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(streamed, 413, "larger than 1,048,576 bytes")


# --- Shapes and depths that reached a 500 (hardening item 9) -----------------------------------


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"alphas": 0.5}, "alphas"),
        ({"alphas": None}, "alphas"),
        ({"llfc_alphas": 0.5}, "llfc_alphas"),
        ({"llfc_alphas": None}, "llfc_alphas"),
        ({"alphas": {"0": 0.5}}, "alphas"),
    ],
    ids=["alphas-number", "alphas-null", "llfc-number", "llfc-null", "alphas-object"],
)
def test_an_alpha_list_given_as_one_number_or_null_is_refused_saying_how_to_write_it(
    alice: httpx.Client, pair: tuple[str, str], params: dict[str, Any], name: str
) -> None:
    body = {"kind": "analyze", "model_a": pair[0], "model_b": pair[1], "params": params}
    body["dataset"] = "builtin:digits"
    assert_problem(
        submit(alice, body), 422, f"'{name}' must be a non-empty list", f"--param '{name}=["
    )


@pytest.mark.parametrize("seed", [-1, 2**31, 10**30], ids=["negative", "2^31", "huge"])
def test_an_analyze_seed_outside_0_to_2_31_is_refused(
    alice: httpx.Client, pair: tuple[str, str], seed: int
) -> None:
    body = {
        "kind": "analyze",
        "model_a": pair[0],
        "model_b": pair[1],
        "dataset": "builtin:digits",
        "params": {"seed": seed},
    }
    assert_problem(submit(alice, body), 422, "'seed' must be an integer from 0 to 2147483647")


@pytest.mark.parametrize(
    ("arch_text", "phrase"),
    [
        ('{"name": "mlp", "widths": ' + _nested(20_000) + "}", "nested 20,001 levels deep"),
        ('{"name": "mlp", "widths": [64, ' + "9" * 5000 + "]}", "integer of 5,000 digits"),
        ('{"name": "mlp", "widths": [64, NaN]}', "holds NaN"),
        ('{"name": "mlp", "widths": [64, 1e999]}', "too large for a float"),
    ],
    ids=["nested-20000", "5000-digits", "nan", "infinite"],
)
def test_an_upload_arch_too_deep_or_too_long_is_refused_with_a_sentence(
    alice: httpx.Client, arch_text: str, phrase: str
) -> None:
    response = alice.post(
        "/v1/checkpoints",
        files={"file": ("m.pt", torch_file(mlp_state(SMALL, 8)))},
        data={"arch": arch_text},
    )
    assert_problem(response, 422, "The 'arch' field", phrase)


@pytest.mark.parametrize(
    ("params_text", "phrase"),
    [
        ('{"arch": {"name": "mlp", "widths": ' + _nested(20_000) + "}}", "levels deep"),
        ('{"arch": {"name": "mlp", "widths": [64, ' + "9" * 5000 + "]}}", "5,000 digits"),
        ('{"nested": ' + _nested(500) + "}", "levels deep"),
        ('{"nested": ' + _nested(900) + "}", "levels deep"),
    ],
    ids=["arch-nested-20000", "arch-5000-digits", "params-500-deep", "params-900-deep"],
)
def test_a_job_body_too_deep_or_with_a_huge_integer_is_refused_with_a_sentence(
    alice: httpx.Client, params_text: str, phrase: str
) -> None:
    text = f'{{"kind": "train", "dataset": "builtin:digits", "params": {params_text}}}'
    for idempotency in ({}, {"Idempotency-Key": f"deep-{uuid.uuid4().hex}"}):
        response = alice.post(
            "/v1/jobs",
            content=text,
            headers={"Content-Type": "application/json", **idempotency},
        )
        assert_problem(response, 422, "The request body", phrase)
