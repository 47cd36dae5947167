"""Reading a job without a polling storm: its ``ETag``, the long poll and the event stream.

The job is always read by the poll's one statement (``service/polls.py``), which checks the key
and the owner first: nothing waits, and nothing streams, for a job the caller may not see. The
waiting itself is the process's :class:`~service.job_watch.JobWatcher`, which costs one query
per tick for all waiters together.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, suppress

from fastapi import Response
from starlette.types import Receive

from service.errors import ServiceError
from service.job_watch import JobState, JobWatcher
from service.schemas import JobPublic

MAX_WAIT_SECONDS = 60
EVENT_FRACTION_INTERVAL_S = 0.25
"""An event stream sends a change of the fraction alone at most four times a second."""
KEEP_ALIVE_SECONDS = 15.0
"""A comment line this often keeps proxies from closing a quiet event stream."""

ReadJob = Callable[[], Awaitable[tuple[JobPublic, bool]]]
"""The job, checked against the caller's key, and whether it is finished."""


def job_state(job: JobPublic) -> JobState:
    return JobState(job.status, job.progress.stage, job.progress.fraction)


def job_etag(body: bytes) -> str:
    """A strong validator of the job's JSON: any change of the body changes it, whatever
    field it is in."""
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (RFC 9110's weak comparison)."""
    if if_none_match is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def job_response(
    job: JobPublic, finished: bool, if_none_match: str | None, retry_after_seconds: int
) -> Response:
    """The job with its ``ETag``, ``Location`` and (unfinished) ``Retry-After``; ``304``
    without a body when ``If-None-Match`` names its ETag."""
    body = job.model_dump_json().encode()
    etag = job_etag(body)
    headers = {"ETag": etag, "Location": f"/v1/jobs/{job.id}"}
    if not finished:
        headers["Retry-After"] = str(retry_after_seconds)
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def should_wait(job: JobPublic, finished: bool, if_none_match: str | None) -> bool:
    """A long poll waits for an unfinished job unless the client's copy is stale already."""
    if finished:
        return False
    if if_none_match is None:
        return True
    return etag_matches(if_none_match, job_etag(job.model_dump_json().encode()))


async def _until_disconnected(receive: Receive) -> None:
    # Once the (empty) body of a GET is read, uvicorn's receive() waits for the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


async def wait_for_step(
    watcher: JobWatcher, receive: Receive, job: JobPublic, seconds: float
) -> bool:
    """Wait until the job's status or progress stage differs from ``job``'s, at most
    ``seconds``; True when it did. The client going away ends the wait (and its subscription)
    at once."""
    known = job_state(job)

    async def step() -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        async with watcher.subscribe(job.id, known) as subscription:
            while (remaining := deadline - loop.time()) > 0:
                await subscription.changed(remaining)
                if not known.same_step(subscription.state):
                    return True
        return False

    stepped = asyncio.ensure_future(step())
    disconnected = asyncio.ensure_future(_until_disconnected(receive))
    try:
        await asyncio.wait((stepped, disconnected), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stepped, disconnected):
            task.cancel()
        with suppress(asyncio.CancelledError):
            await asyncio.gather(stepped, disconnected, return_exceptions=True)
    return stepped.done() and not stepped.cancelled() and stepped.result()


def _event(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


def _progress_event(job_id: str, state: JobState) -> bytes:
    progress = {"fraction": state.fraction, "stage": state.stage}
    return _event(
        "progress", json.dumps({"id": job_id, "status": state.status, "progress": progress})
    )


async def job_events(
    watcher: JobWatcher,
    read_job: ReadJob,
    job: JobPublic,
    finished: bool,
    max_seconds: float,
    slot: AbstractContextManager[None],
) -> AsyncIterator[bytes]:
    """The Server-Sent Events of a job the caller may see (``job``, read just before):
    ``progress`` events while it runs, then one ``job`` event with the finished job, and the
    stream ends. A stream that reaches ``max_seconds`` ends without the ``job`` event (the
    client reconnects), as does one whose job was deleted or whose key was revoked. ``slot``
    (the key's share of waits) is held while the stream waits."""
    with slot:
        if not finished:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max_seconds
            sent = job_state(job)
            yield _progress_event(job.id, sent)
            sent_at = written_at = loop.time()
            async with watcher.subscribe(job.id, sent) as subscription:
                while (now := loop.time()) < deadline:
                    state = subscription.state
                    if state is None or state.finished:
                        break
                    pending = state != sent
                    if pending and (
                        not state.same_step(sent) or now >= sent_at + EVENT_FRACTION_INTERVAL_S
                    ):
                        yield _progress_event(job.id, state)
                        sent, sent_at, written_at = state, now, now
                        continue
                    if now >= written_at + KEEP_ALIVE_SECONDS:
                        yield b": keep-alive\n\n"
                        written_at = now
                    wake_at = (
                        sent_at + EVENT_FRACTION_INTERVAL_S
                        if pending
                        else written_at + KEEP_ALIVE_SECONDS
                    )
                    await subscription.changed(min(wake_at, deadline) - now)
                else:
                    # max_seconds passed: the client connects again for the rest.
                    return
            try:
                job, _ = await read_job()
            except ServiceError:
                return
        yield _event("job", job.model_dump_json())
