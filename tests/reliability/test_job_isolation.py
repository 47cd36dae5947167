"""One job cannot hurt the others: a solve that holds the GIL for many leases is never taken for
a dead worker, one owner's backlog cannot keep another owner's job waiting, and jobs accepted
below the storage quota cannot together store past it.

The first two run on the reliability stack (PostgreSQL, Redis, `llfc api`, a worker with two pool
children); the storage test on an embedded `llfc serve` with a small quota.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path

from support.api import (
    client,
    mlp_arch,
    mlp_state,
    submit,
    torch_file,
    upload_checkpoint,
    wait_for_job,
)
from support.reliability import Stack, submitted
from support.servers import create_key, serve

from llfc_core.archs import parse_arch
from llfc_core.footprint import stored_checkpoint_bytes

GIL_HOLDING_WIDTHS = [1, 2500, 2]
"""Weight matching of this MLP is one ``lap.lapjv`` call on a 2500 x 2500 low-rank cost matrix:
about 10 s on one core, all of it holding the GIL (an in-process ticker thread stalls as long)."""
SHORT_LEASE = {"LLFC_LEASE_SECONDS": "1", "LLFC_HEARTBEAT_SECONDS": "0.25"}
"""The worker takes a run as lost after 1 s without a heartbeat: the solve lasts ~10 leases (and
the API's reaper, with its 5 s lease, twice its lease)."""


def test_a_solve_holding_the_gil_for_many_leases_runs_once_and_is_never_taken_back(
    stack: Stack,
) -> None:
    worker = stack.worker(**SHORT_LEASE)
    with stack.http() as http:
        model_a = upload_checkpoint(
            http, torch_file(mlp_state(GIL_HOLDING_WIDTHS, 1)), mlp_arch(GIL_HOLDING_WIDTHS)
        ).json()["id"]
        model_b = upload_checkpoint(
            http, torch_file(mlp_state(GIL_HOLDING_WIDTHS, 2)), mlp_arch(GIL_HOLDING_WIDTHS)
        ).json()["id"]
        job_id = submitted(
            http, {"kind": "match", "model_a": model_a, "model_b": model_b, "params": {}}
        )
        job = wait_for_job(http, job_id, timeout=300)
    assert (job["status"], job["attempts"]) == ("succeeded", 1), job
    run_seconds = (
        datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
    ).total_seconds()
    assert run_seconds > 3, run_seconds  # the solve outlasted several of the worker's leases
    assert worker.log().count(f"Job {job_id} (match) started") == 1
    assert [artifact["name"] for artifact in job["artifacts"]] == ["model_b_permuted"]


def _train(seed: int, epochs: int = 2) -> dict[str, object]:
    return {
        "kind": "train",
        "dataset": "builtin:digits",
        "params": {
            "arch": {"name": "mlp", "widths": [64, 32, 10]},
            "epochs": epochs,
            "num_modes": 1,
            "seed": seed,
        },
    }


def test_one_owner_backlog_does_not_keep_another_owner_waiting_and_all_of_it_runs(
    stack: Stack,
) -> None:
    stack.worker(LLFC_MAX_RUNNING_JOBS_PER_OWNER="1")
    other_key = create_key("isolation-other-lab", stack.env)
    with stack.http() as lab, client(stack.base_url, other_key) as other:
        backlog = [submitted(lab, _train(seed)) for seed in range(5)]
        late = submitted(other, _train(99))
        late_job = wait_for_job(other, late, timeout=180)
        backlog_jobs = [wait_for_job(lab, job_id, timeout=300) for job_id in backlog]
    assert late_job["status"] == "succeeded", late_job
    assert [job["status"] for job in backlog_jobs] == ["succeeded"] * 5, backlog_jobs
    assert all(job["attempts"] == 1 for job in backlog_jobs)
    runs = sorted(
        (datetime.fromisoformat(job["started_at"]), datetime.fromisoformat(job["finished_at"]))
        for job in backlog_jobs
    )
    # At most one of the lab's jobs ran at any time, and the other lab's job started while
    # the backlog still had jobs to start.
    assert all(ended <= started for (_, ended), (started, _) in itertools.pairwise(runs)), runs
    assert datetime.fromisoformat(late_job["started_at"]) < runs[-1][0]


STORED_WIDTHS = [64, 16, 10]
MODES = 8
QUOTA = 60_000


def test_jobs_accepted_below_the_storage_quota_cannot_store_past_it(tmp_path: Path) -> None:
    """Five train jobs of eight modes each under a 60 KB quota: before reservations all five
    were accepted and stored 254 KB."""
    reservation = MODES * stored_checkpoint_bytes(parse_arch(mlp_arch(STORED_WIDTHS)))
    assert reservation <= QUOTA < 2 * reservation
    body = {
        "kind": "train",
        "dataset": "builtin:digits",
        "params": {"arch": mlp_arch(STORED_WIDTHS), "epochs": 1, "num_modes": MODES},
    }
    with (
        serve(
            tmp_path,
            ["lab"],
            tmp_path / "serve.log",
            LLFC_MAX_STORED_BYTES_PER_OWNER=str(QUOTA),
            LLFC_AUTH="on",
        ) as served,
        client(served.base_url, served.keys["lab"]) as http,
    ):
        answers = [
            submit(http, {**body, "params": {**body["params"], "seed": seed}}) for seed in range(5)
        ]
        assert [answer.status_code for answer in answers] == [202, 507, 507, 507, 507]
        refused = answers[1].json()
        assert refused["type"] == "/problems/storage-quota-exceeded"
        assert refused["detail"] == (
            f"Your checkpoints and datasets already take 0 bytes and your queued and running "
            f"jobs reserve {reservation:,} bytes for their outputs of the {QUOTA:,} bytes this "
            f"service keeps for one owner, so the checkpoints this train job makes "
            f"({reservation:,} bytes at most) cannot be stored; delete checkpoints or datasets "
            "you no longer need or wait for your jobs to end, then try again."
        )
        assert refused["reserved_bytes"] == reservation
        job = wait_for_job(http, answers[0].json()["id"], timeout=180)
        assert job["status"] == "succeeded", job
        stored = sum(item["size_bytes"] for item in http.get("/v1/checkpoints").json()["items"])
        assert 0 < stored <= QUOTA
        assert submit(http, {**body, "params": {**body["params"], "seed": 9}}).status_code == 507
