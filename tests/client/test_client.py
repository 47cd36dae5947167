"""The Python client against a running embedded service, plus its pure helpers."""

from __future__ import annotations

import itertools
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file
from support.client_service import (
    JOB_TIMEOUT_S,
    MLP_ARCH,
    MLP_NUM_PARAMS,
    RunningService,
    mlp_state_dict,
    write_mlp_checkpoint,
)

import llfc_client.client as client_module
from llfc_cli.embedded import free_port
from llfc_client import (
    ApiError,
    Client,
    ConnectionFailed,
    Job,
    JobProgress,
    JobTimeout,
    LLFCClientError,
)
from llfc_client.client import (
    DEFAULT_POLL_S,
    LONG_POLL_S,
    MAX_POLL_S,
    MIN_POLL_S,
    RECONNECT_PAUSE_S,
    RECONNECT_TRIES,
    poll_delay,
    retry_after_seconds,
    state_dict_bytes,
)


def long_train_job(client: Client) -> Job:
    """A train job long enough (hundreds of epochs) to be caught queued or running."""
    return client.submit_job(
        "train", dataset="builtin:digits", params={"arch": MLP_ARCH, "epochs": 400}
    )


def cancel_and_settle(client: Client, job_id: str) -> Job:
    """Cancel a job and wait until it has stopped, so it does not hold the worker."""
    client.cancel_job(job_id)
    return client.wait(job_id, timeout=JOB_TIMEOUT_S)


# --- Pure helpers ------------------------------------------------------------------------------


def test_retry_after_reads_seconds_and_http_dates_and_ignores_garbage() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=7), usegmt=True), now) == 7
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_poll_delay_follows_the_hint_within_bounds() -> None:
    assert poll_delay(2.0) == 2.0
    assert poll_delay(0.0) == MIN_POLL_S
    assert poll_delay(3600.0) == MAX_POLL_S
    assert MIN_POLL_S <= poll_delay(None) <= MAX_POLL_S


def test_base_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "ok"})

    monkeypatch.setenv("LLFC_URL", "http://llfc.example:9000/")
    monkeypatch.setenv("LLFC_API_KEY", "secret-key")
    with Client(transport=httpx.MockTransport(answer)) as client:
        assert client.health() == {"status": "ok"}
    assert str(seen[0].url) == "http://llfc.example:9000/healthz"
    assert seen[0].headers["Authorization"] == "Bearer secret-key"


def test_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLFC_URL", "http://wrong.example")
    monkeypatch.setenv("LLFC_API_KEY", "wrong")
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "ok"})

    with Client("http://right.example", "right", transport=httpx.MockTransport(answer)) as client:
        client.health()
    assert seen[0].url.host == "right.example"
    assert seen[0].headers["Authorization"] == "Bearer right"


def test_a_non_json_error_body_still_becomes_an_api_error() -> None:
    def answer(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="Bad gateway from the proxy\n<html>")

    with (
        Client("http://proxy.example", transport=httpx.MockTransport(answer)) as client,
        pytest.raises(ApiError) as caught,
    ):
        client.get_job("job_x")
    assert caught.value.status == 502
    assert caught.value.title == "Bad Gateway"
    assert caught.value.detail == "Bad gateway from the proxy"


def _refuse_every_request(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"nothing should have been sent, but {request.url} was")


def test_a_state_dict_upload_without_safetensors_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if safetensors were not installed: importing it raises ImportError.
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with (
        Client(
            "http://llfc.example", transport=httpx.MockTransport(_refuse_every_request)
        ) as client,
        pytest.raises(LLFCClientError, match="needs torch and safetensors"),
    ):
        client.upload_checkpoint(mlp_state_dict(seed=1), MLP_ARCH)


def test_a_state_dict_holding_something_else_than_tensors_is_refused_by_name() -> None:
    state = {**mlp_state_dict(seed=1), "epoch": 3}
    with (
        Client(
            "http://llfc.example", transport=httpx.MockTransport(_refuse_every_request)
        ) as client,
        pytest.raises(LLFCClientError, match=r"not tensors \(epoch\)"),
    ):
        client.upload_checkpoint(state, MLP_ARCH)


def test_a_state_dict_with_tensors_sharing_memory_is_sent_with_each_of_them() -> None:
    tied = torch.arange(6.0).reshape(2, 3)
    sent = safetensors_load(state_dict_bytes({"encoder": tied, "decoder": tied, "row": tied[0]}))
    assert sorted(sent) == ["decoder", "encoder", "row"]
    assert torch.equal(sent["decoder"], tied) and torch.equal(sent["row"], tied[0])


# --- Against the running service ---------------------------------------------------------------


def test_health_and_ready_answer(client: Client) -> None:
    assert client.health()["status"] == "ok"
    assert client.ready()["status"] == "ready"


def test_an_unreachable_service_raises_connection_failed_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, timeout=2.0) as client, pytest.raises(ConnectionFailed) as caught:
        client.list_jobs()
    assert caught.value.url == url
    assert url in str(caught.value)


def test_without_the_api_key_the_service_answers_401(service: RunningService) -> None:
    with Client(service.url, api_key="") as anonymous, pytest.raises(ApiError) as caught:
        anonymous.list_jobs()
    assert caught.value.status == 401
    assert caught.value.detail


def test_a_missing_job_raises_api_error_with_the_problem_detail(client: Client) -> None:
    with pytest.raises(ApiError) as caught:
        client.get_job("job_does_not_exist")
    assert caught.value.status == 404
    assert caught.value.title == "Not Found"
    assert "job_does_not_exist" in caught.value.detail
    assert caught.value.type != "about:blank"


def test_checkpoint_upload_is_deduplicated_and_downloads_the_same_tensors(
    client: Client, tmp_path: Path
) -> None:
    path = write_mlp_checkpoint(tmp_path / "a.safetensors", seed=11)
    uploaded = client.upload_checkpoint(path, MLP_ARCH, name="mode a")
    assert uploaded.name == "mode a"
    assert uploaded.num_params == MLP_NUM_PARAMS
    assert uploaded.format == "safetensors"
    assert uploaded.arch == MLP_ARCH
    assert uploaded.size_bytes == path.stat().st_size
    assert client.upload_checkpoint(path, MLP_ARCH).id == uploaded.id
    assert client.get_checkpoint(uploaded.id) == uploaded

    downloaded = client.download_checkpoint(uploaded.id, tmp_path / "back" / "a.safetensors")
    original, returned = load_file(str(path)), load_file(str(downloaded))
    assert sorted(returned) == sorted(original)
    for key, tensor in original.items():
        assert torch.equal(returned[key], tensor)
    assert not list(downloaded.parent.glob("*.part"))


def test_an_in_memory_state_dict_uploads_as_safetensors_and_downloads_the_same_tensors(
    client: Client, tmp_path: Path
) -> None:
    state = mlp_state_dict(seed=12)
    uploaded = client.upload_checkpoint(state, MLP_ARCH)
    assert uploaded.name == "state_dict"
    assert uploaded.format == "safetensors"
    assert uploaded.num_params == MLP_NUM_PARAMS
    # The same tensors serialise to the same bytes, so they are the same checkpoint.
    assert client.upload_checkpoint(mlp_state_dict(seed=12), MLP_ARCH, name="again").id == (
        uploaded.id
    )
    returned = load_file(str(client.download_checkpoint(uploaded.id, tmp_path / "s.safetensors")))
    assert sorted(returned) == sorted(state)
    for key, tensor in state.items():
        assert torch.equal(returned[key], tensor)


def test_checkpoints_page_by_cursor_and_iterate_all(client: Client, tmp_path: Path) -> None:
    ids = {
        client.upload_checkpoint(write_mlp_checkpoint(tmp_path / f"{s}.st", seed=s), MLP_ARCH).id
        for s in (21, 22, 23)
    }
    first = client.list_checkpoints(limit=2)
    assert len(first.items) == 2 and first.next_cursor is not None
    second = client.list_checkpoints(limit=2, cursor=first.next_cursor)
    assert not {c.id for c in first.items} & {c.id for c in second.items}
    listed = [checkpoint.id for checkpoint in client.iter_checkpoints(page_size=2)]
    assert ids <= set(listed)
    assert len(listed) == len(set(listed))


def test_deleted_checkpoint_is_gone(client: Client, tmp_path: Path) -> None:
    checkpoint = client.upload_checkpoint(
        write_mlp_checkpoint(tmp_path / "gone.safetensors", seed=31), MLP_ARCH
    )
    client.delete_checkpoint(checkpoint.id)
    with pytest.raises(ApiError) as caught:
        client.get_checkpoint(checkpoint.id)
    assert caught.value.status == 404


def test_a_checkpoint_that_does_not_fit_its_arch_is_refused_naming_tensors(
    client: Client, tmp_path: Path
) -> None:
    path = write_mlp_checkpoint(tmp_path / "wide.safetensors", seed=41)
    with pytest.raises(ApiError) as caught:
        client.upload_checkpoint(path, {"name": "mlp", "widths": [64, 16, 10]})
    assert caught.value.status == 422
    assert "0.weight" in caught.value.detail
    assert "0.weight" in str(caught.value.extra["mis_shaped"])


def test_dataset_upload_lists_with_the_builtins(client: Client, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=rng.random((20, 64), dtype=np.float32), y=np.arange(20) % 4)
    dataset = client.upload_dataset(path, name="tiny")
    assert (dataset.name, dataset.num_examples, dataset.input_shape) == ("tiny", 20, [64])
    assert dataset.num_classes == 4
    assert not dataset.builtin
    listed = {item.id: item for item in client.iter_datasets()}
    assert dataset.id in listed
    assert listed["builtin:digits"].builtin
    assert listed["builtin:digits"].input_shape == [64]
    assert client.list_datasets().items[0].builtin
    assert client.get_dataset(dataset.id) == dataset
    client.delete_dataset(dataset.id)
    with pytest.raises(ApiError):
        client.get_dataset(dataset.id)


def test_the_same_idempotency_key_returns_the_same_job(
    client: Client, trained_pair: tuple[str, str]
) -> None:
    model_a, model_b = trained_pair
    first = client.submit_job(
        "match", model_a, model_b, params={"method": "weight"}, idempotency_key="match-once"
    )
    again = client.submit_job(
        "match", model_a, model_b, params={"method": "weight"}, idempotency_key="match-once"
    )
    assert again.id == first.id
    finished = client.wait(first.id, timeout=JOB_TIMEOUT_S)
    assert finished.status == "succeeded"
    assert finished.result is not None
    assert finished.result["objective_after"] <= finished.result["objective_before"]
    [artifact] = finished.artifacts
    assert artifact.name == "model_b_permuted"
    assert artifact.checkpoint_id is not None
    assert client.get_checkpoint(artifact.checkpoint_id).arch == MLP_ARCH


def test_a_refused_submission_raises_api_error(client: Client) -> None:
    with pytest.raises(ApiError) as caught:
        client.submit_job("analyze", "ckpt_missing", "ckpt_missing", "builtin:digits")
    assert caught.value.status == 422
    assert "ckpt_missing" in caught.value.detail


def test_jobs_list_and_filter_by_kind_and_status(
    client: Client, trained_pair: tuple[str, str], analyze_job: Job
) -> None:
    analyses = list(client.iter_jobs(kind="analyze", page_size=1))
    assert analyze_job.id in {job.id for job in analyses}
    assert {job.kind for job in analyses} == {"analyze"}
    succeeded = client.list_jobs(status="succeeded", kind="train")
    assert succeeded.items and {job.status for job in succeeded.items} == {"succeeded"}
    assert client.get_job(analyze_job.id).result == analyze_job.result


def test_wait_long_polls_the_service_and_never_sleeps(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    seen: list[Job] = []
    # A run of seconds, so the first answer comes before the job ends: a job ending before the
    # first request would be seen once, finished, which is right but shows no step.
    job = client.submit_job(
        "train", dataset="builtin:digits", params={"arch": MLP_ARCH, "epochs": 200}
    )
    finished = client.wait(job.id, on_progress=seen.append)
    assert finished.status == "succeeded"
    assert slept == []
    # Each answer came when the job took a step (its status or stage changed), not on a timer.
    steps = [(seen_job.status, seen_job.progress.stage) for seen_job in seen]
    assert len(steps) >= 2
    assert all(before != after for before, after in itertools.pairwise(steps))
    fractions = [seen_job.progress.fraction for seen_job in seen]
    assert fractions == sorted(fractions)


def _job_json(status: str, fraction: float = 0.0, stage: str = "queued") -> dict[str, Any]:
    return {
        "id": "job_x",
        "kind": "match",
        "status": status,
        "progress": {"fraction": fraction, "stage": stage},
        "error": None,
        "created_at": "2026-11-30T00:00:00Z",
        "started_at": None,
        "finished_at": None,
        "result": None,
        "artifacts": [],
    }


def test_wait_polls_a_service_without_long_polls_at_its_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An older service ignores ?wait and sends no ETag: each answer comes at once.
    statuses = iter(["queued", "running", "succeeded"])
    asked: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, json=_job_json(next(statuses)), headers={"Retry-After": "3"})

    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    with Client("http://old.example", transport=httpx.MockTransport(answer)) as client:
        assert client.wait("job_x").status == "succeeded"
    assert asked[0].url.params["wait"] == f"{LONG_POLL_S:.3f}"
    assert slept == [3.0, 3.0]


def test_wait_sends_the_last_etag_and_keeps_the_job_of_a_304(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter(
        [
            httpx.Response(200, json=_job_json("running"), headers={"ETag": '"a"'}),
            httpx.Response(304, headers={"ETag": '"a"'}),
            httpx.Response(200, json=_job_json("succeeded"), headers={"ETag": '"b"'}),
        ]
    )
    asked: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return next(answers)

    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    seen: list[Job] = []
    with Client("http://new.example", transport=httpx.MockTransport(answer)) as client:
        assert client.wait("job_x", on_progress=seen.append).status == "succeeded"
    assert [request.headers.get("If-None-Match") for request in asked] == [None, '"a"', '"a"']
    assert [job.status for job in seen] == ["running", "running", "succeeded"]


def _event_stream(*events: tuple[str, dict[str, Any]]) -> bytes:
    body = ": keep-alive\n\n"
    for name, data in events:
        body += f"event: {name}\ndata: {json.dumps(data)}\n\n"
    return body.encode()


def test_follow_reports_every_event_then_returns_the_job_of_the_last() -> None:
    progress = [
        {"id": "job_x", "status": "running", "progress": {"fraction": f, "stage": "step"}}
        for f in (0.25, 0.5)
    ]
    events = [("progress", data) for data in progress] + [("job", _job_json("succeeded"))]

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/jobs/job_x/events"
        stream = _event_stream(*events)
        return httpx.Response(200, content=stream, headers={"Content-Type": "text/event-stream"})

    seen: list[JobProgress | Job] = []
    with Client("http://new.example", transport=httpx.MockTransport(answer)) as client:
        finished = client.follow("job_x", on_progress=seen.append)
    assert finished.status == "succeeded"
    assert [item.progress.fraction for item in seen[:2]] == [0.25, 0.5]
    assert isinstance(seen[0], JobProgress) and seen[-1] == finished


@pytest.mark.parametrize("stream", ["ends early", "not served", "too many waits"])
def test_follow_goes_on_with_wait_when_the_stream_gives_no_job(
    stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            if stream == "not served":
                return httpx.Response(404, json={"detail": "Not Found"})
            if stream == "too many waits":
                return httpx.Response(429, json={"detail": "Too many"})
            running = {"id": "job_x", "status": "running", "progress": {"fraction": 0.5}}
            return httpx.Response(200, content=_event_stream(("progress", running)))
        return httpx.Response(200, json=_job_json("failed"), headers={"ETag": '"z"'})

    monkeypatch.setattr(client_module.time, "sleep", _refuse_sleep)
    with Client("http://new.example", transport=httpx.MockTransport(answer)) as client:
        assert client.follow("job_x").status == "failed"


def _refuse_sleep(seconds: float) -> None:
    raise AssertionError(f"slept {seconds} s")


def _restarting_service(away_for: int) -> httpx.MockTransport:
    """A service whose event stream ends early, and that then is away for ``away_for`` reads
    of the job (an API restart) before it answers with the job finished."""
    reads = itertools.count()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            running = {"id": "job_x", "status": "running", "progress": {"fraction": 0.5}}
            return httpx.Response(200, content=_event_stream(("progress", running)))
        if next(reads) < away_for:
            raise httpx.ConnectError("Connection refused", request=request)
        return httpx.Response(200, json=_job_json("succeeded"), headers={"ETag": '"z"'})

    return httpx.MockTransport(answer)


def test_follow_and_wait_ask_again_while_a_service_that_answered_restarts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    with Client("http://new.example", transport=_restarting_service(3)) as client:
        assert client.follow("job_x").status == "succeeded"
    assert slept == [RECONNECT_PAUSE_S] * 3


def test_a_service_away_for_good_or_never_reached_ends_the_wait_with_a_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    with (
        Client("http://new.example", transport=_restarting_service(1000)) as client,
        pytest.raises(ConnectionFailed, match="Could not reach"),
    ):
        client.follow("job_x")
    assert slept == [RECONNECT_PAUSE_S] * RECONNECT_TRIES

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    monkeypatch.setattr(client_module.time, "sleep", _refuse_sleep)
    with Client("http://new.example", transport=httpx.MockTransport(refuse)) as client:
        for wait in (client.wait, client.follow):
            with pytest.raises(ConnectionFailed, match="Could not reach"):
                wait("job_x")


def test_wait_many_reads_only_the_unfinished_jobs_until_all_are_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ends = {"job_a": 1, "job_b": 3}
    asked: list[list[str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        ids = request.url.params["ids"].split(",")
        asked.append(ids)
        items = [
            {**_job_json("succeeded" if len(asked) >= ends[job_id] else "running"), "id": job_id}
            for job_id in ids
            if job_id in ends
        ]
        return httpx.Response(200, json={"items": items, "next_cursor": None})

    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    with Client("http://new.example", transport=httpx.MockTransport(answer)) as client:
        jobs = client.wait_many(["job_b", "job_a"])
        assert [(job.id, job.status) for job in jobs] == [
            ("job_b", "succeeded"),
            ("job_a", "succeeded"),
        ]
        assert asked == [["job_b", "job_a"], ["job_b"], ["job_b"]]
        assert slept == [DEFAULT_POLL_S, DEFAULT_POLL_S]
        with pytest.raises(LLFCClientError, match="job_other"):
            client.wait_many(["job_a", "job_other"])


def test_get_jobs_reads_the_owners_jobs_named_by_id(client: Client, analyze_job: Job) -> None:
    jobs = client.get_jobs([analyze_job.id, "job_nobodys", analyze_job.id])
    assert [job.id for job in jobs] == [analyze_job.id]


def test_wait_times_out_and_the_job_keeps_going(client: Client) -> None:
    job = long_train_job(client)
    started = time.monotonic()
    with pytest.raises(JobTimeout) as caught:
        client.wait(job.id, timeout=0.5)
    assert time.monotonic() - started < 0.5 + 2.0
    assert caught.value.job_id == job.id
    assert client.get_job(job.id).status in ("queued", "running")
    assert cancel_and_settle(client, job.id).status == "cancelled"


def test_cancel_stops_a_running_job(client: Client) -> None:
    job = long_train_job(client)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while client.get_job(job.id).status == "queued" and time.monotonic() < deadline:
        time.sleep(0.2)
    asked = client.cancel_job(job.id)
    assert asked.status in ("running", "cancelled")
    finished = client.wait(job.id, timeout=JOB_TIMEOUT_S)
    assert finished.status == "cancelled"
    assert finished.artifacts == []


def test_cancelling_a_finished_job_is_a_conflict(client: Client, analyze_job: Job) -> None:
    with pytest.raises(ApiError) as caught:
        client.cancel_job(analyze_job.id)
    assert caught.value.status == 409


def test_layer_metrics_match_the_result(client: Client, analyze_job: Job) -> None:
    assert analyze_job.result is not None
    rows = client.get_layer_metrics(analyze_job.id, pair="matched", metric="cos_ab")
    expected = analyze_job.result["pairs"]["matched"]["llfc"]["cos_ab"]
    assert [row.value for row in rows] == pytest.approx(expected)


def test_get_plot_returns_each_png_of_a_finished_analysis(client: Client, analyze_job: Job) -> None:
    for name in ("lmc", "llfc", "conditions"):
        assert client.get_plot(analyze_job.id, name).startswith(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ApiError) as caught:
        client.get_plot(analyze_job.id, "no-such-plot")
    assert caught.value.status == 404
    assert "no-such-plot" in caught.value.detail
