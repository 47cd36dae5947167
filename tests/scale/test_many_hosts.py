"""Many machines sharing only PostgreSQL, Redis and an S3 bucket, as real processes on this one:
an S3 server on the loopback (moto), one `llfc api` and two `llfc worker` processes, each with
its own LLFC_DATA_DIR, as if each ran on a host of its own.

40 jobs all succeed, each exactly once; a worker killed mid-job leaves its job to the other,
which finishes it; every upload and artifact is an object in the bucket under its content
address, and no data folder holds a blob outside a worker's read cache.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from support.api import client, upload_mlp, wait_for_job
from support.reliability import FAST_RECOVERY, kill_group, train_body
from support.s3 import MotoS3, moto_s3
from support.servers import Process, create_key, llfc, start, wait_ready, wait_until
from support.stores import production_stores

from llfc_cli.embedded import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PREFIX = "hosts"
NUM_JOBS = 40
WIDTHS = [64, 16, 10]
TRAIN_EPOCHS = 12
"""About 7 s of training on two busy cores: caught running, its worker killed, run again."""
CACHE_FOLDER = "cache"


@dataclass
class Fleet:
    base_url: str
    api_key: str
    api: Process
    workers: list[Process]
    data_dirs: list[Path]
    database: Engine
    s3: MotoS3


def _wait_worker_ready(worker: Process) -> None:
    wait_until(
        lambda: worker.popen.poll() is not None or " ready." in worker.log(),
        120,
        "a worker to be ready",
        every=0.25,
    )
    assert worker.popen.poll() is None, worker.log()[-3000:]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("hosts")
    with production_stores("hosts", root) as stores, moto_s3() as s3:
        # One data folder per "host": nothing on disk is shared between them.
        data_dirs = [root / name for name in ("api-host", "worker-host-1", "worker-host-2")]
        envs = [
            stores.env(
                data_dir,
                LLFC_WORKER_CONCURRENCY="1",
                LLFC_MAX_RUNNING_JOBS_PER_OWNER="8",
                LLFC_CACHE_DIR=str(data_dir / CACHE_FOLDER),
                **FAST_RECOVERY,
                **s3.env(PREFIX),
            )
            for data_dir in data_dirs
        ]
        migrated = llfc("migrate", env=envs[0])
        assert migrated.returncode == 0, migrated.stderr
        api_key = create_key("lab", envs[0])
        port = free_port()
        api = start(["api", "--port", str(port)], envs[0], root / "api.log")
        workers = [
            start(["worker"], env, root / f"worker-{index}.log")
            for index, env in enumerate(envs[1:], start=1)
        ]
        database = create_engine(stores.database_url)
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base_url, api)
            for worker in workers:
                _wait_worker_ready(worker)
            yield Fleet(base_url, api_key, api, workers, data_dirs, database, s3)
        finally:
            for worker in workers:
                kill_group(worker)
            api.stop(signal.SIGTERM)
            database.dispose()


def _claimed_child_pid(database: Engine, job_id: str) -> int | None:
    with database.connect() as connection:
        row = connection.execute(
            text("SELECT status, claimed_by FROM jobs WHERE id = :id"), {"id": job_id}
        ).one()
    if row.status == "running" and row.claimed_by:
        return int(str(row.claimed_by).rsplit(":", 1)[1])
    return None


def _blob_named_files(folder: Path, blob_names: set[str]) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and path.name in blob_names]


def test_jobs_run_once_across_hosts_and_survive_a_killed_worker(fleet: Fleet) -> None:
    with client(fleet.base_url, fleet.api_key) as http:
        model_a = upload_mlp(http, WIDTHS, seed=1)
        model_b = upload_mlp(http, WIDTHS, seed=2)
        train = http.post("/v1/jobs", json=train_body(TRAIN_EPOCHS, seed=5))
        assert train.status_code == 202, train.text
        train_id = train.json()["id"]
        child_pid = int(
            wait_until(lambda: _claimed_child_pid(fleet.database, train_id), 120, "training")
        )
        # The worker whose process group holds the child: SIGKILL it all, as a dying host.
        doomed = next(w for w in fleet.workers if os.getpgid(child_pid) == w.popen.pid)
        survivor = next(w for w in fleet.workers if w is not doomed)
        kill_group(doomed)

        job_ids = []
        for index in range(NUM_JOBS):
            body = {
                "kind": "interpolate",
                "model_a": model_a,
                "model_b": model_b,
                # A distinct alpha in (0, 1) each: distinct outputs, none equal to an input.
                "params": {"alpha": (index + 1) / (NUM_JOBS + 1)},
            }
            response = http.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])

        finished = {job_id: wait_for_job(http, job_id, timeout=300) for job_id in job_ids}
        trained = wait_for_job(http, train_id, timeout=300)

    assert [job["status"] for job in finished.values()] == ["succeeded"] * NUM_JOBS
    assert all(job["attempts"] == 1 for job in finished.values())
    assert trained["status"] == "succeeded", trained
    assert trained["attempts"] == 2
    # The killed worker's host is gone, so the survivor ran the second attempt to its end.
    assert doomed.popen.poll() is not None and survivor.popen.poll() is None

    with fleet.database.connect() as connection:
        outputs = connection.execute(
            text(
                "SELECT source_job_id, count(*) AS n FROM checkpoints "
                "WHERE source_job_id IS NOT NULL GROUP BY source_job_id"
            )
        ).all()
        blob_names = set(connection.scalars(text("SELECT sha256 FROM blobs")))
        referenced = set(connection.scalars(text("SELECT blob_sha256 FROM checkpoints")))
    # Every job's output was stored once: no job ran to its end twice.
    counts = {row.source_job_id: row.n for row in outputs}
    assert {job_id: counts.get(job_id) for job_id in job_ids} == dict.fromkeys(job_ids, 1)
    assert counts.get(train_id) == 1

    # Uploads and artifacts are objects in the bucket under their content address ...
    assert referenced <= blob_names
    expected_keys = {f"{PREFIX}/blobs/{sha[:2]}/{sha}" for sha in blob_names}
    assert set(fleet.s3.keys(f"{PREFIX}/blobs/")) == expected_keys
    assert fleet.s3.unfinished_uploads(PREFIX) == []
    # ... and nowhere else: no data folder keeps one, except a worker's cache of what it read.
    for data_dir in fleet.data_dirs:
        assert not (data_dir / "blobs").exists(), data_dir
        stray = [
            path
            for path in _blob_named_files(data_dir, blob_names)
            if CACHE_FOLDER not in path.relative_to(data_dir).parts
        ]
        assert stray == [], stray
    assert _blob_named_files(fleet.data_dirs[0], blob_names) == []
