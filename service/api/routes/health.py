"""/healthz, /readyz and /metrics: liveness, readiness (naming what is down) and Prometheus."""

from __future__ import annotations

import hmac
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

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
from service.db.session import get_engine
from service.metrics import METRICS, job_lines, render, request_lines
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


@router.get("/readyz", responses=problem_responses(503))
def readyz(store: StoreDep) -> JSONResponse:
    """Database (migrated), broker and storage reachable; 503 naming what is not."""
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
    return JSONResponse({"status": "ready", "database": "ok", "broker": "ok", "storage": "ok"})


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
    expected = settings.metrics_token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
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
    processes), jobs by kind and status, queue depth, job durations, upload bytes.

    With auth on, only for `Authorization: Bearer <LLFC_METRICS_TOKEN>`.
    """
    _check_scrape_token(settings, credentials)
    body = render([request_lines(collect(settings.metrics_dir, METRICS)), job_lines(session)])
    session.commit()
    return PlainTextResponse(body, media_type="text/plain; version=0.0.4; charset=utf-8")
