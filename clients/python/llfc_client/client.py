"""A thin synchronous client over httpx for every resource of the LLFC Align HTTP API.

Every method is one request (``iter_*`` and :meth:`Client.wait` a loop of them) and returns the
dataclasses of :mod:`llfc_client.models`. Errors come back as :mod:`llfc_client.errors`: the
server's problem detail as :class:`ApiError`, an unreachable server as :class:`ConnectionFailed`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from llfc_client.errors import (
    ApiError,
    ConnectionFailed,
    InvalidIdError,
    JobTimeout,
    LLFCClientError,
)
from llfc_client.models import Checkpoint, Dataset, Job, JobProgress, LayerMetric, Page
from llfc_results import AnalysisResult

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PAGE_SIZE = 50
MIN_POLL_S = 0.2
MAX_POLL_S = 5.0
DEFAULT_POLL_S = 1.0
MAX_IDS_PER_REQUEST = 100
"""The most job ids one ``GET /v1/jobs?ids=`` takes."""
LONG_POLL_S = 30.0
"""How long one request of :meth:`Client.wait` lets the service hold it (the service allows 60):
under the idle timeouts of common proxies, which would cut a silent request off."""
RECONNECT_TRIES = 20
RECONNECT_PAUSE_S = 3.0
"""After answering once, a service may be away this many times this long (a minute: an API
restart or deploy) before :meth:`Client.wait` gives up."""
DOWNLOAD_CHUNK_BYTES = 1 << 20
OCTET_STREAM = "application/octet-stream"
STATE_DICT_FILENAME = "state_dict.safetensors"
"""The file name an in-memory state dict is uploaded under."""

T = TypeVar("T")


def _segment(value: str) -> str:
    """An id as one URL path segment, so no id can reach another route; an empty one would
    name the collection instead, so it is refused."""
    if not value.strip():
        raise InvalidIdError("An id is empty; give the id a command printed (job_..., ckpt_...).")
    return quote(value, safe="")


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """The delay a ``Retry-After`` header asks for: delta-seconds or an HTTP date; None if absent
    or unreadable."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - (now or datetime.now(UTC))).total_seconds()


def poll_delay(retry_after: float | None) -> float:
    """How long :meth:`Client.wait` sleeps: the server's hint, kept within [MIN_POLL_S, MAX_POLL_S]
    so a wrong hint neither hammers the server nor leaves a finished job unnoticed for long."""
    delay = DEFAULT_POLL_S if retry_after is None else retry_after
    return min(max(delay, MIN_POLL_S), MAX_POLL_S)


_NO_STREAM = (HTTPStatus.NOT_FOUND, HTTPStatus.TOO_MANY_REQUESTS)
"""Answers to an event stream after which :meth:`Client.follow` goes on with :meth:`Client.wait`."""


def _finished(jobs: Mapping[str, Job], job_id: str) -> bool:
    job = jobs.get(job_id)
    return job is not None and job.finished


def _server_sent_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event name, data) of each event of a text/event-stream; comments are skipped."""
    name, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", list[str]()
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))


def state_dict_bytes(state_dict: Mapping[str, Any]) -> bytes:
    """A state dict of torch tensors as safetensors bytes.

    ``safetensors.torch`` (which loads torch) is imported here, only when a state dict is
    uploaded: the client itself needs neither, and whoever holds tensors has torch already.
    """
    try:
        from safetensors.torch import save
    except ImportError as error:
        raise LLFCClientError(
            "Uploading an in-memory state dict needs torch and safetensors (pip install torch "
            "safetensors); without them, upload the checkpoint's file instead."
        ) from error
    # Duck-typed: the client imports no torch itself (the import-linter contract).
    not_tensors = [str(key) for key, value in state_dict.items() if not hasattr(value, "detach")]
    if not_tensors:
        raise LLFCClientError(
            f"The state dict holds values that are not tensors ({', '.join(not_tensors[:5])}); "
            "pass a mapping of names to tensors, such as model.state_dict()."
        )
    # Copies: safetensors refuses tensors that share memory (tied weights, views of one buffer).
    return save(
        {str(key): value.detach().cpu().clone().contiguous() for key, value in state_dict.items()}
    )


def _api_error(response: httpx.Response) -> ApiError:
    """The problem detail of an error response; a sentence from the status for non-JSON bodies."""
    try:
        phrase = HTTPStatus(response.status_code).phrase
    except ValueError:
        phrase = "Error"
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = response.text.strip().splitlines()
        detail = text[0][:300] if text else f"The service answered {response.status_code} {phrase}."
        return ApiError(response.status_code, phrase, detail)
    extra = {k: v for k, v in body.items() if k not in ("type", "title", "status", "detail")}
    raw_detail = body.get("detail")
    if isinstance(raw_detail, str):
        detail = raw_detail
    elif raw_detail is None:
        detail = f"The service answered {response.status_code} {phrase}."
    else:
        detail = json.dumps(raw_detail)
    return ApiError(
        int(body.get("status") or response.status_code),
        str(body.get("title") or phrase),
        detail,
        str(body.get("type") or "about:blank"),
        extra,
    )


class Client:
    """The LLFC Align API at ``base_url`` (default ``$LLFC_URL``, else http://127.0.0.1:8000),
    authenticated with ``api_key`` (default ``$LLFC_API_KEY``; none when auth is off).

    ``timeout`` bounds each network operation in seconds. Use it as a context manager, or call
    :meth:`close`, to release the connection pool.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("LLFC_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("LLFC_API_KEY")
        self.timeout = timeout
        headers = {"User-Agent": "llfc-client/1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------------

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        try:
            response = self._http.send(request, stream=stream)
        except httpx.TimeoutException as error:
            raise ConnectionFailed(self.base_url, f"no answer within {self.timeout:g} s") from error
        except httpx.TransportError as error:
            raise ConnectionFailed(self.base_url, str(error) or type(error).__name__) from error
        if response.is_error:
            if stream:
                response.read()
                response.close()
            raise _api_error(response)
        return response

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._send(self._http.build_request(method, path, **kwargs))

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _download(self, path: str, dest_path: str | os.PathLike[str]) -> Path:
        """Stream ``path`` into ``dest_path`` (creating its folder) through a ``.part`` file, so a
        failed download never leaves a truncated file under the final name; checks
        ``X-Checkpoint-Sha256`` when the service sends it."""
        dest = Path(dest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".part")
        response = self._send(self._http.build_request("GET", path), stream=True)
        digest = hashlib.sha256()
        try:
            with partial.open("wb") as handle:
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                    digest.update(chunk)
                    handle.write(chunk)
        except httpx.TransportError as error:
            partial.unlink(missing_ok=True)
            raise ConnectionFailed(self.base_url, f"the download broke off: {error}") from error
        finally:
            response.close()
        expected = response.headers.get("X-Checkpoint-Sha256")
        if expected and expected != digest.hexdigest():
            partial.unlink(missing_ok=True)
            raise LLFCClientError(
                f"The download of {path} arrived corrupted (sha256 {digest.hexdigest()}, the "
                f"service announced {expected}); try again."
            )
        partial.replace(dest)
        return dest

    @staticmethod
    def _iterate(fetch: Callable[[str | None], Page[T]]) -> Iterator[T]:
        cursor: str | None = None
        while True:
            page = fetch(cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # --- health ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: the process answers."""
        body: dict[str, Any] = self._json("GET", "/healthz")
        return body

    def ready(self) -> dict[str, Any]:
        """``GET /readyz``: database, broker and storage reachable; :class:`ApiError` (503)
        naming what is not."""
        body: dict[str, Any] = self._json("GET", "/readyz")
        return body

    # --- archs -------------------------------------------------------------------------------

    def inspect_arch(self, arch: Mapping[str, Any], prove: bool = True) -> dict[str, Any]:
        """``POST /v1/archs/inspect``: the arch's derived permutation groups, the axes left in
        place and why, its feature layers and (with ``prove``) the proof's figure."""
        body: dict[str, Any] = self._json(
            "POST", "/v1/archs/inspect", json={"arch": dict(arch), "prove": prove}
        )
        return body

    # --- checkpoints -------------------------------------------------------------------------

    def upload_checkpoint(
        self,
        source: str | os.PathLike[str] | Mapping[str, Any],
        arch: dict[str, Any],
        name: str | None = None,
        key_map: Mapping[str, str] | Literal["by_order"] | None = None,
    ) -> Checkpoint:
        """Upload a checkpoint checked against ``arch``: a ``.safetensors`` or ``.pt``/``.pth``
        file, or an in-memory state dict (names to torch tensors, e.g. ``model.state_dict()``),
        sent as safetensors; that one needs torch and safetensors installed.

        Without ``name`` the service names it after the file (an in-memory state dict:
        ``state_dict``). The same bytes uploaded again return the same checkpoint. ``key_map``
        renames the file's tensors to the arch's names: ``"by_order"`` (the renaming a
        checkpoint-mismatch :class:`ApiError` suggests) or ``{name in the file: arch name}``;
        the checkpoint's ``key_map`` then says what was renamed.
        """
        data = {"arch": json.dumps(arch)}
        if name is not None:
            data["name"] = name
        if key_map is not None:
            data["key_map"] = key_map if isinstance(key_map, str) else json.dumps(dict(key_map))
        if isinstance(source, Mapping):
            serialised = (STATE_DICT_FILENAME, state_dict_bytes(source), OCTET_STREAM)
            body = self._json("POST", "/v1/checkpoints", data=data, files={"file": serialised})
            return Checkpoint.from_json(body)
        file_path = Path(source)
        with file_path.open("rb") as handle:
            files = {"file": (file_path.name, handle, OCTET_STREAM)}
            body = self._json("POST", "/v1/checkpoints", data=data, files=files)
        return Checkpoint.from_json(body)

    def list_checkpoints(
        self, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Checkpoint]:
        """One page of the owner's checkpoints, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        body = self._json("GET", "/v1/checkpoints", params=params)
        return Page([Checkpoint.from_json(item) for item in body["items"]], body["next_cursor"])

    def iter_checkpoints(self, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[Checkpoint]:
        """Every checkpoint of the owner, newest first, fetched page by page."""
        return self._iterate(lambda cursor: self.list_checkpoints(page_size, cursor))

    def get_checkpoint(self, checkpoint_id: str) -> Checkpoint:
        return Checkpoint.from_json(self._json("GET", f"/v1/checkpoints/{_segment(checkpoint_id)}"))

    def download_checkpoint(self, checkpoint_id: str, dest_path: str | os.PathLike[str]) -> Path:
        """Save the checkpoint's tensors as a safetensors file at ``dest_path``; returns it."""
        return self._download(f"/v1/checkpoints/{_segment(checkpoint_id)}/file", dest_path)

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Delete a checkpoint; :class:`ApiError` 409 while a queued or running job uses it."""
        self._request("DELETE", f"/v1/checkpoints/{_segment(checkpoint_id)}")

    # --- datasets ----------------------------------------------------------------------------

    def upload_dataset(self, path: str | os.PathLike[str], name: str | None = None) -> Dataset:
        """Upload an ``.npz`` or ``.safetensors`` file holding arrays ``x`` (N×…) and ``y`` (N)."""
        file_path = Path(path)
        data = {"name": name} if name is not None else {}
        with file_path.open("rb") as handle:
            files = {"file": (file_path.name, handle, OCTET_STREAM)}
            body = self._json("POST", "/v1/datasets", data=data, files=files)
        return Dataset.from_json(body)

    def list_datasets(
        self, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Dataset]:
        """One page of datasets: the built-ins, then the owner's uploads, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        body = self._json("GET", "/v1/datasets", params=params)
        return Page([Dataset.from_json(item) for item in body["items"]], body.get("next_cursor"))

    def iter_datasets(self, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[Dataset]:
        return self._iterate(lambda cursor: self.list_datasets(page_size, cursor))

    def get_dataset(self, dataset_id: str) -> Dataset:
        return Dataset.from_json(self._json("GET", f"/v1/datasets/{_segment(dataset_id)}"))

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset; :class:`ApiError` 409 while a queued or running job uses
        it."""
        self._request("DELETE", f"/v1/datasets/{_segment(dataset_id)}")

    # --- jobs --------------------------------------------------------------------------------

    def submit_job(
        self,
        kind: str,
        model_a: str | None = None,
        model_b: str | None = None,
        dataset: str | None = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        *,
        models: Sequence[str] | None = None,
    ) -> Job:
        """Submit a ``match``, ``interpolate``, ``analyze`` or ``train`` job, or a ``sweep`` of
        ``models`` (checkpoint ids); returns it queued.

        With ``idempotency_key``, resubmitting the same body returns the same job, so a retry
        after a lost answer does not start the work twice.
        """
        payload: dict[str, Any] = {
            "kind": kind,
            "model_a": model_a,
            "model_b": model_b,
            "dataset": dataset,
            "params": params or {},
        }
        if models is not None:
            payload["models"] = list(models)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        return Job.from_json(self._json("POST", "/v1/jobs", json=payload, headers=headers))

    def _read_job(
        self, job_id: str, wait_s: float = 0.0, etag: str | None = None
    ) -> tuple[Job | None, httpx.Response]:
        """The job (None for a ``304``: still the version ``etag`` names) and the answer;
        ``wait_s`` makes it a long poll, whose answer may take that long on top of the
        client's timeout."""
        params = {"wait": f"{wait_s:.3f}"} if wait_s > 0 else None
        headers = {"If-None-Match": etag} if etag is not None else None
        request = self._http.build_request(
            "GET",
            f"/v1/jobs/{_segment(job_id)}",
            params=params,
            headers=headers,
            timeout=self.timeout + wait_s,
        )
        response = self._send(request)
        if response.status_code == HTTPStatus.NOT_MODIFIED:
            return None, response
        return Job.from_json(response.json()), response

    def get_job(self, job_id: str) -> Job:
        job, _ = self._read_job(job_id)
        assert job is not None  # no If-None-Match was sent, so no 304
        return job

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        """``GET /v1/jobs?ids=``: the owner's jobs among ``job_ids`` (at most 100), in that
        order; an id the owner has no job of is left out."""
        ids = ",".join(_segment(job_id) for job_id in job_ids)
        body = self._json("GET", "/v1/jobs", params={"ids": ids})
        return [Job.from_json(item) for item in body["items"]]

    def list_jobs(
        self,
        status: str | None = None,
        kind: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[Job]:
        """One page of the owner's jobs, newest first, optionally of one status and kind."""
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("status", status), ("kind", kind), ("cursor", cursor)):
            if value is not None:
                params[key] = value
        body = self._json("GET", "/v1/jobs", params=params)
        return Page([Job.from_json(item) for item in body["items"]], body["next_cursor"])

    def iter_jobs(
        self,
        status: str | None = None,
        kind: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[Job]:
        return self._iterate(lambda cursor: self.list_jobs(status, kind, page_size, cursor))

    def cancel_job(self, job_id: str) -> Job:
        """Cancel: a queued job never runs, a running one stops at its next batch.

        :class:`ApiError` 409 when the job already succeeded or failed.
        """
        return Job.from_json(self._json("POST", f"/v1/jobs/{_segment(job_id)}/cancel"))

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Wait until the job is finished (succeeded, failed or cancelled) and return it.

        Each request is a long poll (``?wait=``, up to LONG_POLL_S seconds, with the last
        answer's ``ETag``): the service answers as soon as the status or progress stage
        changes, so the end of the job is seen at once and no request is sent in between. A
        service that answers at once instead (one without long polls, which sends no ETag) is
        polled, sleeping for its ``Retry-After`` hint within [MIN_POLL_S, MAX_POLL_S].
        ``on_progress`` sees the job after every answer. A service that stops answering after
        it answered once is asked again every RECONNECT_PAUSE_S seconds, RECONNECT_TRIES times
        (an API restart), before :class:`ConnectionFailed`. After ``timeout`` seconds it raises
        :class:`JobTimeout`; the job itself keeps running. A failed job is returned, not
        raised: check ``job.status``.
        """
        return self._wait(job_id, timeout, on_progress, answered_before=False)

    def _wait(
        self,
        job_id: str,
        timeout: float | None,
        on_progress: Callable[[Job], None] | None,
        answered_before: bool,
    ) -> Job:
        """:meth:`wait`; ``answered_before``: the service answered about this job already (an
        event stream that broke off), so it is asked again when it is away."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job: Job | None = None
        etag: str | None = None
        failures = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            wait_s = LONG_POLL_S if remaining is None else max(min(LONG_POLL_S, remaining), 0.0)
            asked_at = time.monotonic()
            try:
                answered, response = self._read_job(job_id, wait_s, etag)
            except ConnectionFailed:
                # The service answered before and went away (a restart, a deploy): the job goes
                # on, so ask again for a while. A service never reached fails at once.
                past_deadline = deadline is not None and time.monotonic() >= deadline
                reached = answered_before or job is not None
                if not reached or failures >= RECONNECT_TRIES or past_deadline:
                    raise
                failures += 1
                time.sleep(RECONNECT_PAUSE_S)
                continue
            failures = 0
            changed = answered is not None and response.headers.get("ETag") != etag
            job = answered or job
            assert job is not None  # the first request sends no If-None-Match: no 304
            etag = response.headers.get("ETag")
            if on_progress is not None:
                on_progress(job)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                assert timeout is not None
                raise JobTimeout(job.id, timeout, job.status, job.progress.stage)
            if etag is None or (not changed and time.monotonic() - asked_at < MIN_POLL_S):
                # No long poll here: poll at the server's pace, never past the deadline.
                delay = poll_delay(retry_after_seconds(response.headers.get("Retry-After")))
                if deadline is not None:
                    delay = min(delay, max(deadline - time.monotonic(), 0.0))
                time.sleep(delay)

    def wait_many(self, job_ids: Sequence[str], timeout: float | None = None) -> list[Job]:
        """Wait until every job of ``job_ids`` is finished; returns them in that order.

        The unfinished ones are read together (``?ids=``, 100 a request) every DEFAULT_POLL_S
        seconds. An id that names none of the owner's jobs raises :class:`LLFCClientError`;
        after ``timeout`` seconds :class:`JobTimeout` names the first unfinished job.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        latest: dict[str, Job] = {}
        while True:
            unfinished = [
                job_id for job_id in dict.fromkeys(job_ids) if not _finished(latest, job_id)
            ]
            if not unfinished:
                return [latest[job_id] for job_id in job_ids]
            for start in range(0, len(unfinished), MAX_IDS_PER_REQUEST):
                asked = unfinished[start : start + MAX_IDS_PER_REQUEST]
                latest.update((job.id, job) for job in self.get_jobs(asked))
                missing = [job_id for job_id in asked if job_id not in latest]
                if missing:
                    raise LLFCClientError(
                        f"No job {missing[0]!r} of yours exists; give the ids that submitting "
                        "printed."
                    )
            waiting = [latest[job_id] for job_id in unfinished if not latest[job_id].finished]
            if not waiting:
                continue
            delay = DEFAULT_POLL_S
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    assert timeout is not None
                    first = waiting[0]
                    raise JobTimeout(first.id, timeout, first.status, first.progress.stage)
                delay = min(delay, remaining)
            time.sleep(delay)

    def follow(
        self,
        job_id: str,
        timeout: float | None = None,
        on_progress: Callable[[JobProgress | Job], None] | None = None,
    ) -> Job:
        """As :meth:`wait`, from the job's event stream (``/v1/jobs/{id}/events``):
        ``on_progress`` sees every change of status, stage and fraction as it happens (at most
        four a second), a :class:`JobProgress` or, once, the finished :class:`Job`. When the
        stream breaks, ends early or is not served, it goes on with :meth:`wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        streamed = False
        try:
            finished = self._follow_events(job_id, deadline, on_progress)
            streamed = True
        except (ConnectionFailed, ApiError) as error:
            if isinstance(error, ApiError) and error.status not in _NO_STREAM:
                raise
            # A service without a stream, a key holding its share of streams already, or no
            # service at all (wait() then says so at once); a job that does not exist makes
            # wait() raise its own 404.
            finished = None
        if finished is not None:
            if on_progress is not None:
                on_progress(finished)
            return finished
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        return self._wait(job_id, remaining, on_progress, answered_before=streamed)

    def _follow_events(
        self,
        job_id: str,
        deadline: float | None,
        on_progress: Callable[[JobProgress | Job], None] | None,
    ) -> Job | None:
        """The finished job from the event stream, or None when the stream ended without it."""
        read_timeout = self.timeout
        if deadline is not None:
            read_timeout = min(read_timeout, max(deadline - time.monotonic(), 0.1))
        request = self._http.build_request(
            "GET",
            f"/v1/jobs/{_segment(job_id)}/events",
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(self.timeout, read=read_timeout),
        )
        response = self._send(request, stream=True)
        try:
            for name, data in _server_sent_events(response.iter_lines()):
                if name == "job":
                    return Job.from_json(json.loads(data))
                if name == "progress" and on_progress is not None:
                    on_progress(JobProgress.from_json(json.loads(data)))
                if deadline is not None and time.monotonic() >= deadline:
                    return None
        except httpx.TransportError:
            # The stream broke off (an API restart, a proxy's timeout): wait() goes on.
            return None
        finally:
            response.close()
        return None

    def get_layer_metrics(
        self,
        job_id: str,
        pair: str | None = None,
        metric: str | None = None,
        layer: str | None = None,
        alpha: float | None = None,
    ) -> list[LayerMetric]:
        """The numbers of an analyze result as rows, filtered by pair, metric, layer and alpha."""
        filters = (("pair", pair), ("metric", metric), ("layer", layer), ("alpha", alpha))
        params = {key: value for key, value in filters if value is not None}
        body = self._json("GET", f"/v1/jobs/{_segment(job_id)}/metrics", params=params)
        return [LayerMetric.from_json(item) for item in body["items"]]

    def list_sweep_pairs(
        self, job_id: str, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[dict[str, Any]]:
        """One page of a succeeded sweep's pairs, by position: each pair's models and its
        matrix numbers, ``naive`` and ``matched``."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        body = self._json("GET", f"/v1/jobs/{_segment(job_id)}/pairs", params=params)
        return Page(list(body["items"]), body.get("next_cursor"))

    def iter_sweep_pairs(
        self, job_id: str, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[dict[str, Any]]:
        return self._iterate(lambda cursor: self.list_sweep_pairs(job_id, page_size, cursor))

    def get_sweep_pair(self, job_id: str, index_a: int, index_b: int) -> AnalysisResult:
        """The whole analysis of one pair of a succeeded sweep (model ``index_a`` as A, model
        ``index_b`` as B, ``index_a < index_b``), as its own analyze job gives it."""
        path = f"/v1/jobs/{_segment(job_id)}/pairs/{int(index_a)}/{int(index_b)}"
        return AnalysisResult.from_json(self._json("GET", path))

    def get_plot(self, job_id: str, name: str) -> bytes:
        """The PNG plot ``name`` of a finished analyze job (e.g. ``lmc``), or ``sweep`` of a
        finished sweep job, as bytes."""
        path = f"/v1/jobs/{_segment(job_id)}/plots/{_segment(name)}.png"
        return self._request("GET", path).content

    def download_url(self, url: str, dest_path: str | os.PathLike[str]) -> Path:
        """Save the bytes at ``url`` (an artifact's URL, relative to the service) to
        ``dest_path``."""
        return self._download(url, dest_path)
