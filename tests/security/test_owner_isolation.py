"""Auth and isolation: every protected route of the OpenAPI document refuses a missing or wrong
key with 401, and answers 404 to an owner asking for another owner's ids; keys are stored only
as keyed hashes; a production start with a weak secret is refused.

The routes are read from the live OpenAPI document, so a new route is covered without a change
here (a new kind of path parameter fails the walk until it is given a real value below).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from support.api import run_job, upload_mlp
from support.security import GuardedService, assert_problem
from support.servers import REPOSITORY_ROOT, create_key, llfc, service_env

from llfc_cli.embedded import free_port
from service.core.config import DEVELOPMENT_SECRET_KEY
from service.security import KEY_PREFIX

SMALL = [64, 16, 10]
PATH_PARAMETER = re.compile(r"{([^}]+)}")


@pytest.fixture(scope="module")
def document(guarded: GuardedService) -> dict[str, Any]:
    return httpx.get(f"{guarded.base_url}/openapi.json").json()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path template, operation) for every operation of the document."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def fill(path: str, values: dict[str, str]) -> str:
    missing = [name for name in PATH_PARAMETER.findall(path) if name not in values]
    assert not missing, f"{path} takes {missing}: give this test a real value for them"
    return PATH_PARAMETER.sub(lambda match: values[match.group(1)], path)


# --- 401 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def revoked_key(guarded: GuardedService) -> str:
    key = create_key("mallory", guarded.env)
    revoked = llfc("keys", "revoke", key[: len(KEY_PREFIX) + 6], env=guarded.env)
    assert revoked.returncode == 0, revoked.stderr
    return key


def test_every_protected_route_is_401_without_a_valid_key(
    guarded: GuardedService, document: dict[str, Any], revoked_key: str
) -> None:
    wrong_authorizations = {
        "no key": None,
        "unknown key": f"Bearer {KEY_PREFIX}{'x' * 43}",
        "revoked key": f"Bearer {revoked_key}",
        "another scheme": f"Basic {guarded.keys['alice']}",
        "bearer without a key": "Bearer",
    }
    dummy_ids = {
        "checkpoint_id": "ckpt_0",
        "dataset_id": "ds_0",
        "job_id": "job_0",
        "name": "lmc",
        "index_a": "0",
        "index_b": "1",
    }
    # /metrics opens to the scrape token, not to an API key (its own test below).
    protected = [
        (method, path)
        for method, path, op in operations(document)
        if op.get("security") and path != "/metrics"
    ]
    assert len(protected) >= 15
    for method, path in protected:
        url = guarded.base_url + fill(path, dummy_ids)
        for case, authorization in wrong_authorizations.items():
            headers = {"Authorization": authorization} if authorization else {}
            response = httpx.request(method, url, headers=headers)
            assert response.status_code == 401, (method, path, case, response.text)
            assert_problem(response, 401, "Authorization: Bearer <key>")
            assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)


def test_only_health_readiness_and_the_service_config_are_public(
    document: dict[str, Any],
) -> None:
    # /v1/config says only whether auth is on, which the web view needs before it has a key.
    public = {(m, p) for m, p, op in operations(document) if not op.get("security")}
    assert public == {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v1/config")}


def test_metrics_open_only_to_the_scrape_token_not_to_an_api_key(
    guarded: GuardedService,
) -> None:
    url = f"{guarded.base_url}/metrics"
    assert_problem(httpx.get(url), 401, "LLFC_METRICS_TOKEN")
    with_key = httpx.get(url, headers={"Authorization": f"Bearer {guarded.keys['alice']}"})
    assert_problem(with_key, 401, "API keys do not open /metrics")
    token = guarded.env["LLFC_METRICS_TOKEN"]
    scraped = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
    assert scraped.status_code == 200, scraped.text
    assert "llfc_http_requests_total" in scraped.text


# --- 404 for another owner's ids ----------------------------------------------------------------


@pytest.fixture(scope="module")
def alices_resources(alice: httpx.Client) -> dict[str, list[str]]:
    """Real ids of alice's: uploaded and produced checkpoints, a dataset, two finished jobs."""
    model_a, model_b = upload_mlp(alice, SMALL, 21), upload_mlp(alice, SMALL, 22)
    arrays = io.BytesIO()
    np.savez(arrays, x=np.random.default_rng(0).random((40, 64)), y=np.arange(40) % 10)
    dataset = alice.post("/v1/datasets", files={"file": ("alice.npz", arrays.getvalue())})
    assert dataset.status_code == 201, dataset.text
    matched = run_job(alice, {"kind": "match", "model_a": model_a, "model_b": model_b})
    analysis = run_job(
        alice,
        {
            "kind": "analyze",
            "model_a": model_a,
            "model_b": model_b,
            "dataset": dataset.json()["id"],
            "params": {"alphas": [0.0, 0.5, 1.0], "llfc_alphas": [0.5]},
        },
    )
    sweep = run_job(
        alice,
        {
            "kind": "sweep",
            "models": [model_a, model_b],
            "dataset": dataset.json()["id"],
            "params": {"alphas": [0.0, 0.5, 1.0], "llfc_alphas": [0.5]},
        },
    )
    return {
        "checkpoint_id": [model_a, matched["artifacts"][0]["checkpoint_id"]],
        "dataset_id": [dataset.json()["id"]],
        "job_id": [analysis["id"], matched["id"], sweep["id"]],
        "name": ["lmc"],
        "index_a": ["0"],
        "index_b": ["1"],
    }


def _requests_with_ids(
    document: dict[str, Any], resources: dict[str, list[str]]
) -> list[tuple[str, str, str]]:
    """(method, path template, path) of every operation taking ids, once per real value of its
    first id (the others take their first value)."""
    requests = []
    first_values = {name: values[0] for name, values in resources.items()}
    for method, template, _operation in operations(document):
        names = PATH_PARAMETER.findall(template)
        if names:
            for value in resources.get(names[0], []):
                requests.append(
                    (method, template, fill(template, {**first_values, names[0]: value}))
                )
    return requests


def _seen_by(http: httpx.Client, method: str, path: str) -> tuple[int, Any]:
    """Status and JSON body (None for an image) of one request."""
    response = http.request(method, path)
    is_json = "json" in response.headers.get("content-type", "")
    return response.status_code, response.json() if is_json else None


def test_another_owners_ids_are_404_on_every_route(
    alice: httpx.Client,
    bob: httpx.Client,
    document: dict[str, Any],
    alices_resources: dict[str, list[str]],
) -> None:
    requests = _requests_with_ids(document, alices_resources)
    reads = [(method, path) for method, _template, path in requests if method != "DELETE"]
    deletes = [path for method, _template, path in requests if method == "DELETE"]
    before = {request: _seen_by(alice, *request) for request in reads}
    # Each route answered alice at least once with a success: the ids are real and reach it
    # (a match job has no plots, so that one route succeeds only for the analyze job).
    routes = {(method, template) for method, template, _path in requests}
    succeeded = {
        (method, template)
        for method, template, path in requests
        if method != "DELETE"
        and (before[method, path][0] < 300 or (method == "POST" and before[method, path][0] == 409))
    }
    assert routes - succeeded == {("DELETE", t) for m, t in routes if m == "DELETE"}
    assert len(routes) >= 9, routes

    for method, _template, path in requests:
        problem = assert_problem(bob.request(method, path), 404)
        assert set(problem) == {"type", "title", "status", "detail"}, (method, path)

    # Bob's DELETE and cancel changed nothing: alice reads exactly what she read before.
    for request, seen in before.items():
        assert _seen_by(alice, *request) == seen, request
    assert len(deletes) >= 3
    for path in deletes:
        assert alice.delete(path).status_code == 204, path


def test_another_owners_ids_cannot_be_used_as_job_inputs_or_seen_in_lists(
    bob: httpx.Client, alice: httpx.Client, alices_resources: dict[str, list[str]]
) -> None:
    model_a, model_b = upload_mlp(alice, SMALL, 23), upload_mlp(alice, SMALL, 24)
    arrays = io.BytesIO()
    np.savez(arrays, x=np.zeros((3, 64)), y=np.array([0, 1, 2]))
    uploaded = alice.post("/v1/datasets", files={"file": ("d.npz", arrays.getvalue())})
    dataset_id = uploaded.json()["id"]
    response = bob.post("/v1/jobs", json={"kind": "match", "model_a": model_a, "model_b": model_b})
    assert_problem(response, 422, "does not exist")
    own_a, own_b = upload_mlp(bob, SMALL, 25), upload_mlp(bob, SMALL, 26)
    body = {"kind": "analyze", "model_a": own_a, "model_b": own_b, "dataset": dataset_id}
    assert_problem(bob.post("/v1/jobs", json=body), 422, f"No dataset with id {dataset_id!r}")

    listed = " ".join(
        bob.get(route).text for route in ("/v1/checkpoints", "/v1/datasets", "/v1/jobs")
    )
    assert own_a in listed
    for alices_id in (model_a, dataset_id, *alices_resources["job_id"]):
        assert alices_id not in listed
    # Asked for by id, alice's jobs are left out as unknown ids are: nothing tells them apart.
    by_ids = bob.get("/v1/jobs", params={"ids": ",".join(alices_resources["job_id"])})
    assert by_ids.status_code == 200
    assert by_ids.json() == {"items": [], "next_cursor": None}


# --- Keys at rest -------------------------------------------------------------------------------


def test_api_keys_are_stored_only_as_keyed_hashes(guarded: GuardedService) -> None:
    database = guarded.data_dir / "llfc.db"
    stored_bytes = b"".join(
        path.read_bytes()
        for path in guarded.data_dir.glob("llfc.db*")  # the database, its WAL and journal
    )
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        tables = [
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        cells = [
            str(value)
            for table in tables
            for row in connection.execute(f'SELECT * FROM "{table}"')
            for value in row
        ]
        hashes = {row[0] for row in connection.execute("SELECT key_hash FROM api_keys")}
    for owner, key in guarded.keys.items():
        secret_part = key[len(KEY_PREFIX) + 6 :]  # what `llfc keys list` never shows
        assert len(secret_part) >= 32
        assert not any(secret_part in cell for cell in cells), owner
        assert secret_part.encode() not in stored_bytes, owner
        assert secret_part not in guarded.process.log(), owner
        secret_key = guarded.env["LLFC_SECRET_KEY"]
        expected = hmac.new(secret_key.encode(), key.encode(), hashlib.sha256)
        assert expected.hexdigest() in hashes, owner


# --- Deployment ---------------------------------------------------------------------------------


def test_the_compose_deployment_runs_with_auth_on_and_a_required_secret() -> None:
    compose = yaml.safe_load((REPOSITORY_ROOT / "docker-compose.yml").read_text())
    llfc_services = {
        name: service
        for name, service in compose["services"].items()
        if "LLFC_DATABASE_URL" in (service.get("environment") or {})
    }
    assert {"api", "worker", "migrate"} <= set(llfc_services)
    for name, service in llfc_services.items():
        environment = service["environment"]
        assert environment["LLFC_AUTH"] == "on", name
        # ${VAR:?message}: compose refuses to start while it is unset, and there is no default.
        assert re.fullmatch(r"\$\{LLFC_SECRET_KEY:\?[^}]+\}", environment["LLFC_SECRET_KEY"]), name


@pytest.mark.parametrize(
    "secret",
    [None, "", DEVELOPMENT_SECRET_KEY, "short-secret"],
    ids=["unset", "empty", "development-default", "too-short"],
)
@pytest.mark.parametrize("database", ["postgres", "sqlite"])
def test_llfc_api_refuses_to_start_with_auth_on_and_a_weak_secret(
    tmp_path: Path, secret: str | None, database: str
) -> None:
    settings = {"LLFC_AUTH": "on"}
    if database == "postgres":
        settings["LLFC_DATABASE_URL"] = "postgresql+psycopg://llfc@127.0.0.1:5432/llfc"
        settings["LLFC_BROKER_URL"] = "redis://127.0.0.1:6379/0"
    env = service_env(tmp_path, **settings)
    if secret is None:
        del env["LLFC_SECRET_KEY"]
    else:
        env["LLFC_SECRET_KEY"] = secret
    refused = llfc("api", "--port", str(free_port()), env=env)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert re.search(
        r"LLFC_SECRET_KEY must be set to a private value of at least 16 characters when "
        r"LLFC_AUTH is on",
        refused.stderr,
    ), refused.stderr
