"""/v1/jobs: submit, list, read, cancel jobs, and query an analysis per layer and alpha (a
sweep's pairs are in ``sweeps.py``)."""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from llfc_core.params import named
from service.api.deps import (
    BearerCredentials,
    CurrentOwner,
    ResourceIdPath,
    SessionDep,
    SettingsDep,
    filter_query,
)
from service.api.job_waits import (
    MAX_WAIT_SECONDS,
    ReadJob,
    job_events,
    job_response,
    should_wait,
    wait_for_step,
)
from service.api.json_body import json_body, json_body_openapi
from service.api.pagination import DEFAULT_PAGE_SIZE, CursorQuery, LimitQuery, paginate
from service.api.problems import ProblemError, problem_responses
from service.api.wait_slots import WaitSlots, waiter_identity
from service.broker import publish_job
from service.core.config import get_settings
from service.db.models import Job, LayerMetric
from service.db.session import get_engine
from service.jobs import (
    cancel_job,
    get_owned_job,
    is_finished,
    job_public,
    jobs_public,
    owned_jobs,
    submit_job,
)
from service.polls import read_polled_job
from service.schemas import (
    RESOURCE_ID_PATTERN,
    JobCreate,
    JobKind,
    JobPublic,
    JobsPublic,
    JobStatus,
    LayerMetricPublic,
    LayerMetricsPublic,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(401, 422))

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="The same key and body from the same owner return the same job.",
    ),
]


def _polling_headers(
    response: Response, job_id: str, finished: bool, retry_after_seconds: int
) -> None:
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    if not finished:
        response.headers["Retry-After"] = str(retry_after_seconds)


JobCreateBody = Annotated[JobCreate, Depends(json_body(JobCreate))]
"""The submission, read only after the key check (``service/api/json_body.py``)."""


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    openapi_extra=json_body_openapi(JobCreate),
    responses=problem_responses(
        400,
        413,
        415,
        429,
        507,
        s413="The JSON body is larger than 1 MiB.",
        s415="The body is not application/json.",
    ),
)
def create_job(
    body: JobCreateBody,
    response: Response,
    owner: CurrentOwner,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Submit a job: checked now (422 for incompatible inputs), then queued.

    Answers 202 with `Location` once the job row is committed; the task is published after.
    """
    job, created = submit_job(session, settings, owner.id, body, idempotency_key)
    if created:
        publish_job(job.id, job.queue)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    _polling_headers(response, job.id, is_finished(job), settings.retry_after_seconds)
    return job_public(session, job)


MAX_IDS = 100
IdsQuery = Annotated[
    str | None,
    Query(
        max_length=MAX_IDS * 101,
        description=f"Comma-separated job ids, at most {MAX_IDS}: the owner's jobs among them, "
        "in this order (other ids are left out); takes no other filter.",
    ),
]


def _ids_problem(detail: str) -> ProblemError:
    """The 422 of a query parameter ``ids`` of the wrong form, typed as every malformed
    request field is (``validation``)."""
    return ProblemError(422, detail, type_slug="validation")


def _job_ids(ids: str) -> list[str]:
    """The ids of ``?ids=``, each once, in their order; 422 for a malformed or too long list."""
    job_ids = list(dict.fromkeys(part.strip() for part in ids.split(",") if part.strip()))
    if not job_ids:
        raise _ids_problem("The parameter 'ids' names no job; give job ids separated by commas.")
    if len(job_ids) > MAX_IDS:
        raise _ids_problem(
            f"The parameter 'ids' names {len(job_ids)} jobs; ask for at most {MAX_IDS} at once."
        )
    malformed = [job_id for job_id in job_ids if not re.fullmatch(RESOURCE_ID_PATTERN, job_id)]
    if malformed:
        raise _ids_problem(
            f"{malformed[0][:100]!r} in 'ids' is not a job id (job_... as submitting printed)."
        )
    return job_ids


@router.get("", response_model=JobsPublic)
def list_jobs(
    request: Request,
    owner: CurrentOwner,
    session: SessionDep,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    limit: LimitQuery = DEFAULT_PAGE_SIZE,
    cursor: CursorQuery = None,
    ids: IdsQuery = None,
) -> JobsPublic:
    """The owner's jobs, newest first, optionally of one status and kind; or, with `ids`, the
    named ones in the order named."""
    if ids is not None:
        others = [
            name for name in ("status", "kind", "limit", "cursor") if name in request.query_params
        ]
        if others:
            raise _ids_problem(
                f"The parameter 'ids' reads the jobs it names and takes no {named(others)}; "
                "send them without it."
            )
        return JobsPublic(
            items=jobs_public(session, owned_jobs(session, owner.id, _job_ids(ids))),
            next_cursor=None,
        )
    statement = select(Job).where(Job.owner_id == owner.id)
    if status is not None:
        statement = statement.where(Job.status == status)
    if kind is not None:
        statement = statement.where(Job.kind == kind)
    rows, next_cursor = paginate(session, statement, Job.created_at, Job.id, limit, cursor)
    return JobsPublic(items=jobs_public(session, rows), next_cursor=next_cursor)


WaitQuery = Annotated[
    float | None,
    Query(
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="Hold the answer until the status or progress stage changes, at most this "
        "many seconds (with `If-None-Match`: until the job differs from that version).",
    ),
]
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match")]
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "The job is still the version `If-None-Match` names."}
}


def _key(credentials: BearerCredentials) -> str | None:
    return credentials.credentials if credentials is not None else None


def _job_reader(job_id: str, credentials: BearerCredentials) -> ReadJob:
    """The poll's one-statement read of the job (key check included), in the thread pool."""
    return functools.partial(
        run_in_threadpool, read_polled_job, get_engine(), get_settings(), job_id, _key(credentials)
    )


@router.get(
    "/{job_id}", response_model=JobPublic, responses={**NOT_MODIFIED, **problem_responses(404)}
)
async def read_job(
    job_id: ResourceIdPath,
    request: Request,
    credentials: BearerCredentials,
    wait: WaitQuery = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """A job's status, progress, result and artifacts, with its `ETag`; `Retry-After` while it
    is not finished. With `wait`, a long poll: the answer waits for the job's next step (or
    comes at once when the key holds LLFC_MAX_WAITS_PER_KEY waits already)."""
    # The route clients poll: the key check and the read are one statement (service/polls.py),
    # run in one thread-pool call. Every answer is read fresh.
    read = _job_reader(job_id, credentials)
    public, finished = await read()
    slots: WaitSlots = request.app.state.wait_slots
    identity = waiter_identity(_key(credentials))
    if wait and should_wait(public, finished, if_none_match) and not slots.full(identity):
        # Held answers have their own latency series, apart from the polls answered at once.
        request.state.metrics_route = f"{router.prefix}/{{job_id}}?wait"
        with slots.hold(identity):
            stepped = await wait_for_step(
                request.app.state.job_watcher, request.receive, public, wait
            )
        if stepped:
            public, finished = await read()
    return job_response(public, finished, if_none_match, get_settings().retry_after_seconds)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`progress` events while the job runs, then one `job` event.",
        },
        **problem_responses(
            404, 429, s429="The key holds LLFC_MAX_WAITS_PER_KEY waits open already."
        ),
    },
)
async def job_event_stream(
    job_id: ResourceIdPath, request: Request, credentials: BearerCredentials
) -> StreamingResponse:
    """The job as Server-Sent Events: `progress` (status and progress) whenever they change,
    then `job` (the finished job) and the stream ends."""
    read = _job_reader(job_id, credentials)
    public, finished = await read()
    settings = get_settings()
    slots: WaitSlots = request.app.state.wait_slots
    identity = waiter_identity(_key(credentials))
    if slots.full(identity):
        raise ProblemError(
            429,
            f"This API key holds {slots.max_per_key} long polls and event streams open already "
            "(LLFC_MAX_WAITS_PER_KEY); close some, or read the job with GET "
            f"/v1/jobs/{job_id} meanwhile.",
            type_slug="too-many-waits",
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )
    events = job_events(
        request.app.state.job_watcher,
        read,
        public,
        finished,
        settings.events_max_seconds,
        slots.hold(identity),
    )
    # No-cache and no proxy buffering: each event must reach the client when it is sent.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={
        202: {"description": "Running: asked to stop at its next batch."},
        **problem_responses(404, 409, s409="The job already succeeded or failed."),
    },
)
def cancel(
    job_id: ResourceIdPath,
    response: Response,
    owner: CurrentOwner,
    session: SessionDep,
    settings: SettingsDep,
) -> JobPublic:
    """Cancel a job: a queued one never runs (200); a running one stops at its next batch (202).

    A finished job cannot be cancelled (409).
    """
    job = cancel_job(session, get_owned_job(session, owner.id, job_id))
    if job.status == JobStatus.RUNNING:
        response.status_code = 202
    _polling_headers(response, job.id, is_finished(job), settings.retry_after_seconds)
    return job_public(session, job)


@router.get(
    "/{job_id}/metrics", response_model=LayerMetricsPublic, responses=problem_responses(404)
)
def layer_metrics(
    job_id: ResourceIdPath,
    owner: CurrentOwner,
    session: SessionDep,
    pair: Annotated[str | None, filter_query(description="naive or matched")] = None,
    metric: Annotated[str | None, filter_query(description="e.g. cos_alpha, lmc_error")] = None,
    layer: Annotated[str | None, filter_query(description="A layer name, e.g. 0 or logits")] = None,
    alpha: float | None = None,
) -> LayerMetricsPublic:
    """The numbers of an analyze result as rows, filtered by pair, metric, layer and alpha.

    A sweep job has none: its numbers are per pair of models, at `/v1/jobs/{id}/pairs` (404)."""
    job = get_owned_job(session, owner.id, job_id)
    if job.kind == JobKind.SWEEP:
        raise ProblemError(
            404,
            f"Job {job.id} is a sweep job, whose numbers are per pair of models: read them at "
            f"/v1/jobs/{job.id}/pairs, and one pair's whole analysis at "
            f"/v1/jobs/{job.id}/pairs/{{index_a}}/{{index_b}}.",
            type_slug="not-found",
        )
    statement = select(LayerMetric).where(LayerMetric.job_id == job_id)
    if pair is not None:
        statement = statement.where(LayerMetric.pair == pair)
    if metric is not None:
        statement = statement.where(LayerMetric.metric == metric)
    if layer is not None:
        statement = statement.where(LayerMetric.layer == layer)
    if alpha is not None:
        statement = statement.where(LayerMetric.alpha == alpha)
    rows = session.scalars(statement.order_by(LayerMetric.id))
    return LayerMetricsPublic(
        items=[LayerMetricPublic.model_validate(row, from_attributes=True) for row in rows]
    )
