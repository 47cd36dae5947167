"""/v1/jobs/{id}/plots: PNG pictures of a finished analysis (see :mod:`service.plots`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from service.api.deps import CurrentOwner, ResourceIdPath, SessionDep
from service.api.problems import ProblemError, problem_responses
from service.jobs import get_owned_job
from service.plots import UnknownPlotError, check_plot_name, render_plot

router = APIRouter(prefix="/v1/jobs", tags=["plots"], responses=problem_responses(401, 422))

# A succeeded job's result never changes, so the browser may keep a plot (private: it is the
# owner's data).
CACHE_CONTROL = "private, max-age=86400"

PLOT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The plot as a PNG image.",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    },
    **problem_responses(
        404,
        409,
        s404="No such job of the caller, not an analyze job, or no such plot.",
        s409="The job has not succeeded (yet), so it has no result to plot.",
    ),
}


class PNGResponse(Response):
    media_type = "image/png"


@router.get(
    "/{job_id}/plots/{name}.png",
    response_class=PNGResponse,
    responses=PLOT_RESPONSES,
    summary="A plot of an analyze job",
)
def read_plot(
    job_id: ResourceIdPath, name: str, owner: CurrentOwner, session: SessionDep
) -> PNGResponse:
    """Plot `name` (lmc, llfc or conditions) of the owner's succeeded analyze job.

    `lmc`: loss and error against alpha; `llfc`: per-layer E[1 - cos_alpha] against
    E[1 - cos_AB]; `conditions`: Conditions I and II per layer. Naive against matched when the
    analysis matched.
    """
    job = get_owned_job(session, owner.id, job_id)
    if job.kind != "analyze":
        raise ProblemError(
            404,
            f"Job {job.id} is a {job.kind} job; only analyze jobs have plots.",
            type_slug="not-found",
        )
    try:
        check_plot_name(name)
    except UnknownPlotError as error:
        raise ProblemError(404, error.message, type_slug="not-found") from error
    if job.status != "succeeded" or job.result is None:
        raise ProblemError(
            409,
            f"Job {job.id} is {job.status}; its plots exist once it has succeeded.",
            type_slug="job-not-finished",
        )
    return PNGResponse(render_plot(job.result, name), headers={"Cache-Control": CACHE_CONTROL})
