"""/healthz, /readyz and /metrics: liveness, readiness (naming what is down) and Prometheus."""

from __future__ import annotations

import dataclasses
import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.orm import Session

from service.api.deps import BearerCredentials, SessionDep, SettingsDep, StoreDep
from service.api.problems import (
    UNAUTHORIZED_HEADERS,
    ProblemError,
    problem_response,
    problem_responses,
)
from service.broker import check_connection
from service.core.config import Settings
from service.db.migrate import current_revision, head_revision
from service.db.models import utcnow
from service.db.session import get_engine
from service.fleet import QueueState, queue_states, registered_workers, unserved_queues_sentence
from service.metrics import METRICS, fleet_lines, job_lines, render, request_lines
from service.shared_metrics import collect

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

BROKER_TIMEOUT_S = 3.0


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


def _database_problem() -> str | None:
    try:
        engine = get_engine()
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        revision = current_revision(engine)
    except Exception as error:
        logger.warning("Readiness: database unreachable: %s", error)
        return f"the database is unreachable ({type(error).__name__})"
    if revision != head_revision():
        return f"the database schema is at {revision!r}, not the latest; run 'llfc migrate'"
    return None


def _broker_problem() -> str | None:
    try:
        check_connection(BROKER_TIMEOUT_S)
    except Exception as error:
        logger.warning("Readiness: broker unreachable: %s", error)
        return f"the message broker is unreachable ({type(error).__name__})"
    return None


def _queues(
    session: Session, settings: Settings, with_counts: bool
) -> tuple[dict[str, QueueState], str | None]:
    """Each queue's live consumers and queued jobs, and a warning naming those without a
    consumer."""
    states = queue_states(session, settings, registered_workers(session), utcnow())
    session.commit()
    return states, unserved_queues_sentence(states, settings, with_counts)


ScrapeHeader = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
"""/readyz's optional scrape token, read as a plain header: the route stays public (no security
scheme in the OpenAPI document), and only the queue counts depend on it."""


@router.get("/readyz", responses=problem_responses(503))
def readyz(
    store: StoreDep, session: SessionDep, settings: SettingsDep, authorization: ScrapeHeader = None
) -> JSONResponse:
    """Database (migrated), broker and storage reachable; 503 naming what is not. Also each
    queue's live consumers and queued jobs, with a warning (still 200: the API itself is ready)
    naming any queue that jobs are routed to or wait in and that no live worker consumes. With
    auth on, the counts (every owner's jobs) only for the scrape token, as /metrics."""
    problems = [
        problem
        for problem in (
            _database_problem(),
            _broker_problem(),
            store.problem(),
        )
        if problem
    ]
    if problems:
        return problem_response(
            503, "Not ready: " + "; ".join(problems) + ".", type_slug="not-ready"
        )
    token = authorization.removeprefix("Bearer ").strip() if authorization else None
    with_counts = not settings.auth or _is_scrape_token(settings, token)
    states, warning = _queues(session, settings, with_counts)
    queues = {name: dataclasses.asdict(state) for name, state in states.items()}
    return JSONResponse(
        {
            "status": "ready",
            "database": "ok",
            "broker": "ok",
            "storage": "ok",
            "queues": queues if with_counts else None,
            "warning": warning,
        }
    )


def _is_scrape_token(settings: Settings, token: str | None) -> bool:
    if token is None or settings.metrics_token is None:
        return False
    expected = settings.metrics_token.get_secret_value().encode()
    return hmac.compare_digest(token.encode(), expected)


def _check_scrape_token(settings: Settings, credentials: BearerCredentials) -> None:
    """With auth on, /metrics opens only to LLFC_METRICS_TOKEN: it counts every owner's jobs and
    requests, which no owner's API key may see."""
    if not settings.auth:
        return
    if credentials is None:
        raise ProblemError(
            401,
            "With auth on, /metrics needs the scrape token: send 'Authorization: Bearer <token>' "
            "with the value of LLFC_METRICS_TOKEN.",
            type_slug="unauthorized",
            headers=UNAUTHORIZED_HEADERS,
        )
    if settings.metrics_token is None:
        raise ProblemError(
            403,
            "This service has no scrape token, so /metrics is closed while auth is on; the "
            "operator sets LLFC_METRICS_TOKEN to open it to a scraper.",
            type_slug="forbidden",
        )
    if not _is_scrape_token(settings, credentials.credentials):
        raise ProblemError(
            401,
            "The scrape token is not valid: send the value of LLFC_METRICS_TOKEN "
            "(API keys do not open /metrics).",
            type_slug="unauthorized",
            headers=UNAUTHORIZED_HEADERS,
        )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses=problem_responses(
        401,
        403,
        s401="With auth on: no scrape token, or not LLFC_METRICS_TOKEN.",
        s403="With auth on and no LLFC_METRICS_TOKEN set: /metrics is closed.",
    ),
)
def metrics(
    session: SessionDep, settings: SettingsDep, credentials: BearerCredentials
) -> PlainTextResponse:
    """Prometheus text: requests by route and status with latencies (summed over this host's API
    processes), jobs by kind and status, queue depth and live workers by queue, each worker's
    heartbeat age, job durations, upload bytes.

    With auth on, only for `Authorization: Bearer <LLFC_METRICS_TOKEN>`.
    """
    _check_scrape_token(settings, credentials)
    now = utcnow()
    workers = registered_workers(session)
    states = queue_states(session, settings, workers, now)
    body = render(
        [
            request_lines(collect(settings.metrics_dir, METRICS)),
            job_lines(session),
            fleet_lines(states, workers, now),
        ]
    )
    session.commit()
    return PlainTextResponse(body, media_type="text/plain; version=0.0.4; charset=utf-8")
