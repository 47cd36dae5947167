"""Per-owner quotas over HTTP: queued jobs (429 with Retry-After) and stored bytes (507), each with
a detail that says what to do; one owner's quota never limits another."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from support.api import client, mlp_arch, mlp_state, submit, torch_file, upload_checkpoint
from support.servers import Process, create_key, llfc, service_env, start, wait_ready

from llfc_cli.embedded import free_port

SMALL = [64, 16, 10]
MAX_QUEUED = 3
UPLOAD_BYTES = len(torch_file(mlp_state(SMALL, seed=0)))
MAX_STORED = int(2.5 * UPLOAD_BYTES)
"""Room for two small checkpoints, not three."""


@dataclass
class QuotaService:
    base_url: str
    keys: dict[str, str]
    api: Process


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuotaService]:
    """`llfc api` alone (no worker, so jobs stay queued), auth on, small quotas."""
    data_dir = tmp_path_factory.mktemp("quotas")
    env = service_env(
        data_dir,
        LLFC_AUTH="on",
        LLFC_DEVICE="cpu",
        LLFC_MAX_QUEUED_JOBS_PER_OWNER=str(MAX_QUEUED),
        LLFC_MAX_STORED_BYTES_PER_OWNER=str(MAX_STORED),
    )
    assert llfc("migrate", env=env).returncode == 0
    keys = {owner: create_key(owner, env) for owner in ("alice", "bob", "carol", "dave")}
    port = free_port()
    api = start(["api", "--port", str(port)], env, data_dir / "api.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, api)
        yield QuotaService(base_url, keys, api)
    finally:
        api.stop(signal.SIGTERM)


def _upload(http: httpx.Client, seed: int) -> httpx.Response:
    return upload_checkpoint(http, torch_file(mlp_state(SMALL, seed)), mlp_arch(SMALL))


def test_stored_bytes_past_the_quota_are_refused_with_507_for_that_owner_only(
    service: QuotaService,
) -> None:
    with (
        client(service.base_url, service.keys["alice"]) as alice,
        client(service.base_url, service.keys["bob"]) as bob,
    ):
        assert _upload(alice, 1).status_code == 201
        second = _upload(alice, 2)
        assert second.status_code == 201
        # Uploading bytes already stored adds nothing, so it is still accepted.
        assert _upload(alice, 2).json()["id"] == second.json()["id"]

        refused = _upload(alice, 3)
        assert refused.status_code == 507
        problem = refused.json()
        assert problem["type"] == "/problems/storage-quota-exceeded"
        assert problem["detail"] == (
            f"Your checkpoints and datasets already take {2 * UPLOAD_BYTES:,} bytes of the "
            f"{MAX_STORED:,} bytes this service keeps for one owner, so this upload cannot be "
            "stored; delete checkpoints or datasets you no longer need, then try again."
        )
        assert len(alice.get("/v1/checkpoints").json()["items"]) == 2

        assert _upload(bob, 3).status_code == 201

        # Deleting frees the room again.
        assert alice.delete(f"/v1/checkpoints/{second.json()['id']}").status_code == 204
        assert _upload(alice, 3).status_code == 201


def test_queued_jobs_past_the_quota_are_refused_with_429_until_one_leaves_the_queue(
    service: QuotaService,
) -> None:
    with (
        client(service.base_url, service.keys["carol"]) as carol,
        client(service.base_url, service.keys["dave"]) as dave,
    ):
        model_a, model_b = (_upload(carol, seed).json()["id"] for seed in (11, 12))
        body = {"kind": "analyze", "model_a": model_a, "model_b": model_b}
        body["dataset"] = "builtin:digits"
        queued = []
        for index in range(MAX_QUEUED):
            response = submit(carol, body, **{"Idempotency-Key": f"quota-{index}"})
            assert response.status_code == 202, response.text
            queued.append(response.json()["id"])

        refused = submit(carol, body)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "30"
        problem = refused.json()
        assert problem["type"] == "/problems/too-many-queued-jobs"
        assert problem["detail"] == (
            f"You already have {MAX_QUEUED} queued jobs, the most this service keeps waiting "
            "for one owner; submit again once some have started, or cancel some."
        )
        waiting = carol.get("/v1/jobs", params={"status": "queued"}).json()["items"]
        assert sorted(job["id"] for job in waiting) == sorted(queued)
        # A replay of an accepted submission is not a new job: it is answered as before.
        replay = submit(carol, body, **{"Idempotency-Key": "quota-0"})
        assert replay.status_code == 202 and replay.json()["id"] == queued[0]

        dave_model = _upload(dave, 13).json()["id"]
        dave_body = {**body, "model_a": dave_model, "model_b": dave_model}
        assert submit(dave, dave_body).status_code == 202

        assert carol.post(f"/v1/jobs/{queued[0]}/cancel").status_code == 200
        assert submit(carol, body).status_code == 202
