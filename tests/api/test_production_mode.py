"""The production shape: PostgreSQL, Redis, `llfc migrate`, `llfc api` and `llfc worker` as
separate processes, auth on, on the run's own database and Redis (support.stores)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from support.api import client, mlp_arch, run_job, submit, upload_mlp, wait_for_job
from support.servers import (
    REPOSITORY_ROOT,
    TEST_METRICS_TOKEN,
    Process,
    create_key,
    llfc,
    start,
    wait_ready,
)
from support.stores import ProductionStores, production_stores

from llfc_cli.embedded import free_port

pytestmark = pytest.mark.postgres

TABLES = {"owners", "api_keys", "checkpoints", "datasets", "jobs", "job_artifacts", "layer_metrics"}
SMALL = [64, 16, 10]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionStores]:
    """An empty database and Redis of this module's own, used by its tests one after the other."""
    with production_stores("production", tmp_path_factory.mktemp("redis")) as stores:
        yield stores


def _tables(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_alembic_upgrade_downgrade_and_upgrade_again(
    stores: ProductionStores, tmp_path: Path
) -> None:
    env = stores.env(tmp_path)
    assert llfc("migrate", env=env).returncode == 0
    assert _tables(stores.database_url) >= TABLES
    downgraded = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", "alembic.ini", "downgrade", "base"],
        cwd=REPOSITORY_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert downgraded.returncode == 0, downgraded.stderr
    assert _tables(stores.database_url) <= {"alembic_version"}
    again = llfc("migrate", env=env)
    assert again.returncode == 0, again.stderr
    assert _tables(stores.database_url) >= TABLES


def test_the_default_secret_is_refused_with_auth_on_and_postgres(
    stores: ProductionStores, tmp_path: Path
) -> None:
    env = stores.env(tmp_path)
    del env["LLFC_SECRET_KEY"]
    refused = llfc("api", "--port", str(free_port()), env=env, timeout=60)
    assert refused.returncode != 0
    assert "LLFC_SECRET_KEY must be set" in refused.stderr
    assert "Traceback" not in refused.stderr


@dataclass
class Production:
    base_url: str
    keys: dict[str, str]
    api: Process
    worker: Process


@pytest.fixture(scope="module")
def production(
    stores: ProductionStores, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Production]:
    data_dir = tmp_path_factory.mktemp("production")
    env = stores.env(data_dir)
    migrated = llfc("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    keys = {owner: create_key(owner, env) for owner in ("alice", "bob")}
    port = free_port()
    api = start(["api", "--port", str(port)], env, data_dir / "api.log")
    worker = start(["worker"], env, data_dir / "worker.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, api)
        yield Production(base_url, keys, api, worker)
    finally:
        api.stop(signal.SIGTERM)
        worker.stop(signal.SIGTERM)


def test_jobs_run_end_to_end_on_postgres_and_redis(production: Production) -> None:
    with (
        client(production.base_url, production.keys["alice"]) as alice,
        client(production.base_url, production.keys["bob"]) as bob,
        client(production.base_url) as anonymous,
    ):
        assert anonymous.get("/v1/jobs").status_code == 401
        assert anonymous.get("/readyz").json()["status"] == "ready"
        model_a, model_b = upload_mlp(alice, SMALL, 1), upload_mlp(alice, SMALL, 2)
        body = {"kind": "match", "model_a": model_a, "model_b": model_b}
        first = submit(alice, body, **{"Idempotency-Key": "production-1"})
        assert first.status_code == 202
        assert first.headers["location"] == f"/v1/jobs/{first.json()['id']}"
        replay = submit(alice, body, **{"Idempotency-Key": "production-1"})
        assert replay.json()["id"] == first.json()["id"]
        matched = wait_for_job(alice, first.json()["id"])
        assert matched["status"] == "succeeded", matched
        assert matched["attempts"] == 1
        permuted = matched["artifacts"][0]["checkpoint_id"]
        assert alice.get(f"/v1/checkpoints/{permuted}").json()["arch"] == mlp_arch(SMALL)
        assert bob.get(f"/v1/jobs/{matched['id']}").status_code == 404
        assert bob.get(f"/v1/checkpoints/{permuted}").status_code == 404

        analysis = run_job(
            alice,
            {
                "kind": "analyze",
                "model_a": model_a,
                "model_b": permuted,
                "dataset": "builtin:digits",
                "params": {"alphas": [0.0, 0.5, 1.0], "llfc_alphas": [0.5]},
            },
        )
        assert set(analysis["result"]["pairs"]) == {"naive"}
        rows = alice.get(
            f"/v1/jobs/{analysis['id']}/metrics", params={"metric": "lmc_error"}
        ).json()["items"]
        assert [row["alpha"] for row in rows] == [0.0, 0.5, 1.0]

        scrape = {"Authorization": f"Bearer {TEST_METRICS_TOKEN}"}
        metrics = alice.get("/metrics", headers=scrape).text
        assert 'llfc_jobs{kind="analyze",status="succeeded"} 1' in metrics


def test_a_job_cancelled_while_queued_never_runs_on_the_worker(production: Production) -> None:
    with client(production.base_url, production.keys["alice"]) as alice:
        model_a, model_b = upload_mlp(alice, SMALL, 5), upload_mlp(alice, SMALL, 6)
        # Stop the worker from taking jobs, so this one stays queued in Redis.
        production.worker.popen.send_signal(signal.SIGSTOP)
        try:
            queued = submit(alice, {"kind": "interpolate", "model_a": model_a, "model_b": model_b})
            job_id = queued.json()["id"]
            assert alice.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        finally:
            production.worker.popen.send_signal(signal.SIGCONT)
        # The worker receives the message and must leave the job alone.
        control = run_job(alice, {"kind": "interpolate", "model_a": model_b, "model_b": model_a})
        assert control["status"] == "succeeded"
        job = alice.get(f"/v1/jobs/{job_id}").json()
        assert (job["status"], job["started_at"], job["attempts"]) == ("cancelled", None, 0)
        assert f"Job {job_id} is not queued" in production.worker.log()
