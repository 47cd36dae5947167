"""`llfc serve` in its default shape (auth off), stopped and started again on the same data."""

from __future__ import annotations

import signal
from pathlib import Path

from support.api import (
    LONG_ANALYZE_WIDTHS,
    client,
    long_analyze_body,
    processes_with_env,
    run_job,
    submit,
    upload_mlp,
    wait_for_job,
)
from support.servers import service_env, start, wait_ready

from llfc_cli.embedded import free_port

SMALL = [64, 16, 10]


def test_a_restart_keeps_everything_and_runs_the_jobs_left_queued(tmp_path: Path) -> None:
    env = service_env(tmp_path, LLFC_DEVICE="cpu", LLFC_WORKER_STOP_GRACE_SECONDS="1")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    first = start(["serve", "--port", str(port)], env, tmp_path / "first.log")
    try:
        wait_ready(base_url, first)
        with client(base_url) as http:  # auth is off: no key needed
            model_a, model_b = upload_mlp(http, SMALL, 1), upload_mlp(http, SMALL, 2)
            matched = run_job(http, {"kind": "match", "model_a": model_a, "model_b": model_b})
            wide_a = upload_mlp(http, LONG_ANALYZE_WIDTHS, 3)
            wide_b = upload_mlp(http, LONG_ANALYZE_WIDTHS, 4)
            long_job = submit(http, long_analyze_body(wide_a, wide_b)).json()
            wait_for_job(http, long_job["id"], statuses=("running",))
            left_queued = submit(
                http, {"kind": "interpolate", "model_a": model_a, "model_b": model_b}
            ).json()
            assert http.get(f"/v1/jobs/{left_queued['id']}").json()["status"] == "queued"
    finally:
        assert first.stop(signal.SIGTERM) == 0, first.log()[-3000:]
    # The worker went with the server.
    assert processes_with_env("LLFC_DATA_DIR", str(tmp_path)) == []

    second = start(["serve", "--port", str(port)], env, tmp_path / "second.log")
    try:
        wait_ready(base_url, second)
        with client(base_url) as http:
            assert http.get(f"/v1/checkpoints/{model_a}").status_code == 200
            again = http.get(f"/v1/jobs/{matched['id']}").json()
            assert again["status"] == "succeeded"
            assert again["result"] == matched["result"]
            permuted = again["artifacts"][0]["checkpoint_id"]
            assert http.get(f"/v1/checkpoints/{permuted}/file").status_code == 200

            # The job cut short by the stop was queued again rather than lost or left running.
            interrupted = http.get(f"/v1/jobs/{long_job['id']}").json()
            assert interrupted["status"] in ("queued", "running")
            assert interrupted["attempts"] >= 1
            assert http.post(f"/v1/jobs/{long_job['id']}/cancel").status_code in (200, 202)
            assert wait_for_job(http, long_job["id"])["status"] == "cancelled"

            # The job still queued at the stop runs after the restart.
            finished = wait_for_job(http, left_queued["id"])
            assert finished["status"] == "succeeded"
            assert finished["artifacts"][0]["name"] == "interpolated"
    finally:
        assert second.stop(signal.SIGINT) == 0, second.log()[-3000:]
    assert processes_with_env("LLFC_DATA_DIR", str(tmp_path)) == []
