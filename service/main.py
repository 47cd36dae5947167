"""The FastAPI application: routers, problem-detail errors, request metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api.body_limit import BodyLimitMiddleware
from service.api.problems import install_problem_handlers
from service.api.request_metrics import MetricsMiddleware
from service.api.routes import (
    archs,
    checkpoints,
    config,
    datasets,
    health,
    jobs,
    plots,
    sweeps,
    web,
)
from service.api.security_headers import SecurityHeadersMiddleware
from service.api.wait_slots import WaitSlots
from service.checkpoints import warn_if_torch_files_are_refused
from service.core.config import get_settings
from service.db.session import get_engine
from service.job_watch import JobWatcher
from service.metrics import METRICS
from service.polls import read_job_states
from service.shared_metrics import publishing
from service.storage import open_blob_store

DESCRIPTION = """
Tells whether, and why, two trained networks are connected, and aligns them so that they are.

Upload checkpoints and datasets, submit `match`, `interpolate`, `analyze` and `train` jobs,
poll them (`Retry-After`), and read results and artifacts back. Errors are RFC 9457 problem
details. With auth on, send `Authorization: Bearer <api key>`.
"""


def create_app() -> FastAPI:
    settings = get_settings()
    settings.create_data_dir()
    open_blob_store(settings).ensure()
    warn_if_torch_files_are_refused()

    # One per process: every long poll and event stream of this process shares its one query.
    job_watcher = JobWatcher(
        lambda job_ids: read_job_states(get_engine(), job_ids), settings.wait_tick_seconds
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Other API processes of this host report this one's request counts from the file.
        with publishing(settings.metrics_dir, METRICS):
            yield
        await job_watcher.stop()

    # /docs is ours (service/api/routes/web.py): FastAPI's loads Swagger UI from a CDN through
    # an inline script; ReDoc, the same way, is not offered.
    app = FastAPI(
        title="LLFC Align",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.job_watcher = job_watcher
    app.state.wait_slots = WaitSlots(settings.max_waits_per_key)
    install_problem_handlers(app)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(
        BodyLimitMiddleware, upload_paths=(checkpoints.router.prefix, datasets.router.prefix)
    )
    app.add_middleware(SecurityHeadersMiddleware)
    for module in (checkpoints, datasets, jobs, archs, plots, sweeps, config, health, web):
        app.include_router(module.router)
    return app


app = create_app()
