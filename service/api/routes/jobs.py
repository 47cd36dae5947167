"""/v1/jobs: submit, list, read, cancel jobs, and query an analysis per layer and alpha (a
sweep's pairs are in ``sweeps.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from service.api.deps import (
    BearerCredentials,
    CurrentOwner,
    ResourceIdPath,
    SessionDep,
    SettingsDep,
    filter_query,
)
from service.api.json_body import json_body, json_body_openapi
from service.api.pagination import DEFAULT_PAGE_SIZE, CursorQuery, LimitQuery, paginate
from service.api.problems import ProblemError, problem_responses
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
    submit_job,
)
from service.polls import read_polled_job
from service.schemas import (
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


@router.get("", response_model=JobsPublic)
def list_jobs(
    owner: CurrentOwner,
    session: SessionDep,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    limit: LimitQuery = DEFAULT_PAGE_SIZE,
    cursor: CursorQuery = None,
) -> JobsPublic:
    """The owner's jobs, newest first, optionally of one status and kind."""
    statement = select(Job).where(Job.owner_id == owner.id)
    if status is not None:
        statement = statement.where(Job.status == status)
    if kind is not None:
        statement = statement.where(Job.kind == kind)
    rows, next_cursor = paginate(session, statement, Job.created_at, Job.id, limit, cursor)
    return JobsPublic(items=jobs_public(session, rows), next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=problem_responses(404))
async def read_job(
    job_id: ResourceIdPath, response: Response, credentials: BearerCredentials
) -> JobPublic:
    """A job's status, progress, result and artifacts; `Retry-After` while it is not finished."""
    # The route clients poll: the key check and the read are one statement (service/polls.py),
    # run in one thread-pool call. Every answer is read fresh.
    settings = get_settings()
    key = credentials.credentials if credentials is not None else None
    public, finished = await run_in_threadpool(read_polled_job, get_engine(), settings, job_id, key)
    _polling_headers(response, job_id, finished, settings.retry_after_seconds)
    return public


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
