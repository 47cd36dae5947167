"""Text PostgreSQL cannot hold: a NUL byte in an id, a cursor, a filter, a body or a name.

SQLite stores such text; PostgreSQL fails the whole query, which the service turned into a 500
before ids, cursors and filters were checked at the edge. Runs `llfc api` on the run's own
PostgreSQL database and Redis (support.stores).
"""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from support.api import client, mlp_arch, mlp_state, torch_file, upload_checkpoint
from support.security import assert_problem
from support.servers import llfc, start, wait_ready
from support.stores import production_stores

from llfc_cli.embedded import free_port
from service.security import create_api_key

pytestmark = pytest.mark.postgres

SMALL = [64, 16, 10]
NUL_CURSOR = (
    base64.urlsafe_b64encode(json.dumps(["2024-01-01T00:00:00+00:00", "job_\x00"]).encode())
    .decode()
    .rstrip("=")
)


@pytest.fixture(scope="module")
def postgres_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """`llfc api` on PostgreSQL with auth on, and a client holding a valid key."""
    data_dir: Path = tmp_path_factory.mktemp("postgres-text")
    with production_stores("security", data_dir) as stores:
        env = stores.env(data_dir)
        migrated = llfc("migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        engine = create_engine(stores.database_url)
        with Session(engine) as session:
            key = create_api_key(session, "nul", stores.secret_key)
            session.commit()
        engine.dispose()
        port = free_port()
        api = start(["api", "--port", str(port)], env, data_dir / "api.log")
        try:
            wait_ready(f"http://127.0.0.1:{port}", api, path="/healthz")
            with client(f"http://127.0.0.1:{port}", key) as http:
                yield http
            assert "Traceback" not in api.log(), api.log()[-5000:]
        finally:
            api.stop(signal.SIGTERM)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/checkpoints/ckpt_%00"),
        ("GET", "/v1/checkpoints/ckpt_%00/file"),
        ("DELETE", "/v1/checkpoints/ckpt_%00"),
        ("GET", "/v1/datasets/ds_%00"),
        ("DELETE", "/v1/datasets/ds_%00"),
        ("GET", "/v1/jobs/job_%00"),
        ("POST", "/v1/jobs/job_%00/cancel"),
        ("GET", "/v1/jobs/job_%00/metrics"),
        ("GET", "/v1/jobs/job_%00/plots/lmc.png"),
        ("GET", "/v1/jobs/job_0/metrics?layer=%00"),
        ("GET", "/v1/jobs/job_0/metrics?metric=a%00&pair=%00"),
        ("GET", f"/v1/jobs?cursor={NUL_CURSOR}"),
        ("GET", f"/v1/checkpoints?cursor={NUL_CURSOR}"),
    ],
)
def test_a_nul_byte_in_a_url_is_refused_with_422(
    postgres_api: httpx.Client, method: str, path: str
) -> None:
    assert_problem(postgres_api.request(method, path), 422)
    assert postgres_api.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        '{"kind": "match", "model_a": "ckpt_\\u0000", "model_b": "ckpt_1"}',
        '{"kind": "analyze", "model_a": "a", "model_b": "b", "dataset": "ds_\\u0000"}',
        '{"kind": "match", "model_a": "ckpt_\\ud800", "model_b": "ckpt_1"}',
        '{"kind": "train", "params": {"arch": {"name": "mlp", "widths": [64, 10]}, '
        '"dataset": "ds_\\u0000"}}',
        '{"kind": "train", "params": {"arch": {"name": "mlp", "widths": [64, 10]}, "dataset": 5}}',
    ],
    ids=["nul-model", "nul-dataset", "lone-surrogate", "nul-params-dataset", "number-dataset"],
)
def test_a_job_naming_impossible_ids_is_refused_with_422(
    postgres_api: httpx.Client, body: str
) -> None:
    response = postgres_api.post(
        "/v1/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 422)


def test_a_name_with_a_nul_byte_is_stored_without_it(postgres_api: httpx.Client) -> None:
    content = torch_file(mlp_state(SMALL, 1))
    response = upload_checkpoint(postgres_api, content, mlp_arch(SMALL), name="lab\x00model")
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "labmodel"
    listed = postgres_api.get("/v1/checkpoints").json()["items"]
    assert [item["name"] for item in listed] == ["labmodel"]
