"""/healthz, /readyz, /metrics, /openapi.json and /docs over real HTTP."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from support.api import run_job, upload_mlp
from support.servers import TEST_METRICS_TOKEN, llfc, service_env, start, wait_ready

from llfc_cli.embedded import free_port

API_PATHS = {
    "/v1/checkpoints",
    "/v1/checkpoints/{checkpoint_id}",
    "/v1/checkpoints/{checkpoint_id}/file",
    "/v1/datasets",
    "/v1/datasets/{dataset_id}",
    "/v1/jobs",
    "/v1/jobs/{job_id}",
    "/v1/jobs/{job_id}/cancel",
    "/healthz",
    "/readyz",
    "/metrics",
}


def test_health_and_readiness(anonymous: httpx.Client) -> None:
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200
    answer = ready.json()
    assert {key: answer[key] for key in ("status", "database", "broker", "storage")} == {
        "status": "ready",
        "database": "ok",
        "broker": "ok",
        "storage": "ok",
    }
    # With auth on, the queues' counts (every owner's jobs) are for the scrape token alone.
    assert answer["queues"] is None
    scraped = anonymous.get("/readyz", headers={"Authorization": f"Bearer {TEST_METRICS_TOKEN}"})
    queues = scraped.json()["queues"]
    # `llfc serve`'s one worker consumes every queue the rules name.
    assert set(queues) >= {"cpu", "gpu"}
    assert queues["gpu"]["consumers"] == queues["cpu"]["consumers"]


def _sample(metrics: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = "^" + re.escape(f"{name}{{{selector}}}" if labels else name) + r" (\S+)$"
    match = re.search(pattern, metrics, flags=re.MULTILINE)
    assert match, f"{name} {labels} not in metrics"
    return float(match.group(1))


def test_metrics_count_requests_jobs_and_uploads(alice: httpx.Client) -> None:
    model_a, model_b = upload_mlp(alice, [64, 8, 10], 71), upload_mlp(alice, [64, 8, 10], 72)
    run_job(alice, {"kind": "match", "model_a": model_a, "model_b": model_b})
    alice.get("/v1/jobs/job_does_not_exist")
    metrics = alice.get("/metrics", headers={"Authorization": f"Bearer {TEST_METRICS_TOKEN}"})
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert (
        _sample(
            text, "llfc_http_requests_total", method="POST", route="/v1/checkpoints", status="201"
        )
        >= 2
    )
    assert (
        _sample(
            text, "llfc_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="404"
        )
        >= 1
    )
    assert (
        _sample(text, "llfc_http_request_duration_seconds_count", method="POST", route="/v1/jobs")
        >= 1
    )
    assert _sample(text, "llfc_jobs", kind="match", status="succeeded") >= 1
    assert _sample(text, "llfc_queue_depth", queue="cpu") >= 0
    assert _sample(text, "llfc_workers", queue="cpu") == 1
    assert _sample(text, "llfc_job_duration_seconds_count", kind="match") >= 1
    assert _sample(text, "llfc_upload_bytes_total") > 0
    assert "# TYPE llfc_http_request_duration_seconds histogram" in text


def test_openapi_and_docs_describe_the_whole_contract(anonymous: httpx.Client) -> None:
    schema = anonymous.get("/openapi.json").json()
    assert set(schema["paths"]) >= API_PATHS
    upload = schema["paths"]["/v1/checkpoints"]["post"]["requestBody"]["content"]
    assert set(upload["multipart/form-data"]["schema"]["properties"]) == {
        "file",
        "arch",
        "name",
        "key_map",
    }
    docs = anonymous.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def test_unknown_routes_and_methods_are_problem_details(anonymous: httpx.Client) -> None:
    missing = anonymous.get("/v2/nothing")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert missing.json()["title"] == "Not Found"
    wrong_method = anonymous.put("/healthz")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["status"] == 405


def test_readiness_names_an_unreachable_broker(tmp_path: Path) -> None:
    env = service_env(tmp_path, LLFC_BROKER_URL="redis://127.0.0.1:1/0")
    assert llfc("migrate", env=env).returncode == 0
    port = free_port()
    api = start(["api", "--port", str(port)], env, tmp_path / "api.log")
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, api, path="/healthz")
        answer = httpx.get(f"{base_url}/readyz", timeout=30)
        assert answer.status_code == 503
        assert "broker" in answer.json()["detail"]
        assert "database" not in answer.json()["detail"]
    finally:
        api.stop()
