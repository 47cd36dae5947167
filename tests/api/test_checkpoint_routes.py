"""/v1/checkpoints over real HTTP: upload, dedup, validation, download, pagination, delete, auth."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import httpx
import torch
from support.api import (
    MAX_UPLOAD_BYTES,
    EmbeddedService,
    mlp_arch,
    mlp_state,
    read_safetensors,
    safetensors_file,
    torch_file,
    upload_checkpoint,
    upload_mlp,
)

WIDTHS = [64, 16, 10]


def test_torch_upload_answers_201_with_its_description(alice: httpx.Client) -> None:
    content = torch_file(mlp_state(WIDTHS, seed=101))
    response = upload_checkpoint(alice, content, mlp_arch(WIDTHS), name="first model")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "first model"
    assert body["format"] == "torch"
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["size_bytes"] == len(content)
    assert body["arch"] == mlp_arch(WIDTHS)
    assert body["num_params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert body["created_at"].endswith("Z") or "+00:00" in body["created_at"]
    assert alice.get(f"/v1/checkpoints/{body['id']}").json() == body


def test_the_same_bytes_uploaded_twice_give_the_same_id(alice: httpx.Client) -> None:
    content = safetensors_file(mlp_state(WIDTHS, seed=102))
    first = upload_checkpoint(alice, content, mlp_arch(WIDTHS), filename="a.safetensors")
    second = upload_checkpoint(alice, content, mlp_arch(WIDTHS), filename="b.safetensors")
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["format"] == "safetensors"


def test_download_gives_the_uploaded_tensors_as_safetensors(alice: httpx.Client) -> None:
    state = mlp_state(WIDTHS, seed=103)
    checkpoint_id = upload_checkpoint(alice, torch_file(state), mlp_arch(WIDTHS)).json()["id"]
    response = alice.get(f"/v1/checkpoints/{checkpoint_id}/file")
    assert response.status_code == 200
    downloaded = read_safetensors(response.content)
    assert set(downloaded) == set(state)
    for key, tensor in state.items():
        assert torch.equal(downloaded[key], tensor)


def test_upload_that_does_not_fit_its_arch_is_422_naming_the_tensors(alice: httpx.Client) -> None:
    state = mlp_state(WIDTHS, seed=104)
    state["extra.weight"] = torch.zeros(3)
    del state["2.bias"]
    response = upload_checkpoint(alice, torch_file(state), mlp_arch([64, 32, 10]))
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"] == "/problems/checkpoint-mismatch"
    assert problem["status"] == 422
    assert problem["missing"] == ["2.bias"]
    assert problem["unexpected"] == ["extra.weight"]
    assert problem["mis_shaped"] == ["0.weight", "0.bias", "2.weight"]
    for name in ("2.bias", "extra.weight", "0.weight"):
        assert name in problem["detail"]


class WritesAFileWhenUnpickled:
    """A pickle payload that would create a file if the server ever unpickled it fully."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_a_torch_file_holding_code_is_refused_and_never_run(
    alice: httpx.Client, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    state = {**mlp_state(WIDTHS, seed=105), "payload": WritesAFileWhenUnpickled(marker)}
    response = upload_checkpoint(alice, torch_file(state), mlp_arch(WIDTHS))  # type: ignore[arg-type]
    assert response.status_code == 422
    assert response.json()["type"] == "/problems/unreadable-checkpoint"
    assert not marker.exists()


def test_a_bad_arch_or_garbage_bytes_are_422_with_a_sentence(alice: httpx.Client) -> None:
    content = torch_file(mlp_state(WIDTHS, seed=106))
    not_json = alice.post(
        "/v1/checkpoints", files={"file": ("m.pt", content)}, data={"arch": "{mlp"}
    )
    assert not_json.status_code == 422
    assert "not valid JSON" in not_json.json()["detail"]
    unknown = upload_checkpoint(alice, content, {"name": "transformer"})
    assert unknown.status_code == 422
    assert unknown.json()["type"] == "/problems/invalid-arch"
    garbage = upload_checkpoint(alice, b"\x00" * 100, mlp_arch(WIDTHS))
    assert garbage.status_code == 422
    assert garbage.json()["type"] == "/problems/unreadable-checkpoint"
    no_file = alice.post("/v1/checkpoints", data={"arch": '{"name": "mlp"}'})
    assert no_file.status_code in (415, 422)


def test_listing_is_paginated_newest_first_without_repeats(carol: httpx.Client) -> None:
    uploaded = [upload_mlp(carol, WIDTHS, seed=200 + index) for index in range(3)]
    first = carol.get("/v1/checkpoints", params={"limit": 2}).json()
    assert [item["id"] for item in first["items"]] == uploaded[::-1][:2]
    assert first["next_cursor"]
    second = carol.get(
        "/v1/checkpoints", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [item["id"] for item in second["items"]] == [uploaded[0]]
    assert second["next_cursor"] is None
    bad = carol.get("/v1/checkpoints", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422


def test_delete_removes_the_checkpoint(alice: httpx.Client) -> None:
    checkpoint_id = upload_mlp(alice, WIDTHS, seed=107)
    assert alice.delete(f"/v1/checkpoints/{checkpoint_id}").status_code == 204
    assert alice.get(f"/v1/checkpoints/{checkpoint_id}").status_code == 404
    assert alice.get(f"/v1/checkpoints/{checkpoint_id}/file").status_code == 404
    assert alice.delete(f"/v1/checkpoints/{checkpoint_id}").status_code == 404


def test_a_blob_two_owners_uploaded_goes_with_the_last_checkpoint_naming_it(
    embedded: EmbeddedService, alice: httpx.Client, bob: httpx.Client
) -> None:
    content = torch_file(mlp_state(WIDTHS, seed=109))
    ids = [upload_checkpoint(http, content, mlp_arch(WIDTHS)).json()["id"] for http in (alice, bob)]
    blob_sha256 = alice.get(f"/v1/checkpoints/{ids[0]}/file").headers["x-checkpoint-sha256"]
    blob = embedded.data_dir / "blobs" / blob_sha256[:2] / blob_sha256
    assert alice.delete(f"/v1/checkpoints/{ids[0]}").status_code == 204
    assert blob.is_file()
    assert bob.get(f"/v1/checkpoints/{ids[1]}/file").status_code == 200
    assert bob.delete(f"/v1/checkpoints/{ids[1]}").status_code == 204
    assert not blob.exists()


def test_another_owners_checkpoint_is_404_everywhere(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    checkpoint_id = upload_mlp(alice, WIDTHS, seed=108)
    for response in (
        bob.get(f"/v1/checkpoints/{checkpoint_id}"),
        bob.get(f"/v1/checkpoints/{checkpoint_id}/file"),
        bob.delete(f"/v1/checkpoints/{checkpoint_id}"),
    ):
        assert response.status_code == 404
        assert response.json()["detail"] == f"No checkpoint with id {checkpoint_id!r} exists."
    assert checkpoint_id not in [c["id"] for c in bob.get("/v1/checkpoints").json()["items"]]
    assert alice.get(f"/v1/checkpoints/{checkpoint_id}").status_code == 200


def test_requests_without_or_with_a_wrong_key_are_401(
    anonymous: httpx.Client, embedded: EmbeddedService
) -> None:
    for headers in ({}, {"Authorization": "Bearer llfc_wrong"}, {"Authorization": "Basic x"}):
        response = anonymous.get("/v1/checkpoints", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in response.json()["detail"]
    assert anonymous.get("/healthz").status_code == 200


def _raw_request(embedded: EmbeddedService, key: str, head: str, body_chunks: list[bytes]) -> str:
    """Send a request over a bare socket, stop sending, and read whatever the server answers."""
    host, port = embedded.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(head.replace("{key}", key).encode())
        for chunk in body_chunks:
            connection.sendall(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = connection.recv(65536)
            if not data:
                break
            answer += data
    return answer.decode(errors="replace")


def test_an_upload_declared_too_large_is_413_before_its_body_is_sent(
    embedded: EmbeddedService,
) -> None:
    head = (
        "POST /v1/checkpoints HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {MAX_UPLOAD_BYTES * 4}\r\n\r\n"
    )
    answer = _raw_request(embedded, embedded.keys["alice"], head, [])
    assert answer.startswith("HTTP/1.1 413")


def test_a_streamed_upload_is_413_once_past_the_cap_without_reading_the_rest(
    embedded: EmbeddedService,
) -> None:
    head = (
        "POST /v1/datasets HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    part_head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="d.npz"\r\n\r\n'
    megabyte = b"\x01" * (1024 * 1024)
    chunks = [f"{len(part_head):x}\r\n".encode() + part_head + b"\r\n"]
    # Exactly the cap, then one more kilobyte, then nothing: the body never ends (no closing
    # chunk, no closing boundary), so only a server that stops reading at the cap can answer.
    for _ in range(MAX_UPLOAD_BYTES // len(megabyte)):
        chunks.append(f"{len(megabyte):x}\r\n".encode() + megabyte + b"\r\n")
    chunks.append(b"400\r\n" + b"\x01" * 1024 + b"\r\n")
    answer = _raw_request(embedded, embedded.keys["alice"], head, chunks)
    assert answer.startswith("HTTP/1.1 413")
    assert not list((embedded.data_dir / "blobs" / "incoming").iterdir())
