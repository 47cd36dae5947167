"""/v1/jobs/{id}/plots and /v1/jobs/{id}/result.csv: a finished analysis as PNG pictures (see
:mod:`llfc_core.plots`) and as CSV (:mod:`llfc_results.export`, the CSV ``llfc results`` writes);
a finished sweep as its heat map (:mod:`llfc_core.sweep_plot`) and its matrices as CSV."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from llfc_core.plots import UnknownPlotError, check_plot_name, render_plot
from llfc_core.sweep_plot import SWEEP_PLOT, render_sweep_plot
from llfc_results import AnalysisResult, SweepResult, analysis_csv, sweep_csv
from service.api.deps import CurrentOwner, ResourceIdPath, SessionDep
from service.api.problems import ProblemError, problem_responses
from service.db.models import Job, JobKind, JobStatus
from service.jobs import article, get_owned_job

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
        s404="No such job of the caller, not an analyze or sweep job, or no such plot of it.",
        s409="The job has not succeeded (yet), so it has no result to plot.",
    ),
}


CSV_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One line per number: pair, metric, layer, alpha, value (a sweep: "
        "pair, metric, model_a, model_b, value).",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
    **problem_responses(
        404,
        409,
        s404="No such job of the caller, or not an analyze or sweep job.",
        s409="The job has not succeeded (yet), so it has no result.",
    ),
}


class PNGResponse(Response):
    media_type = "image/png"


class CSVResponse(Response):
    media_type = "text/csv"


def refuse_other_kinds(job: Job, kinds: tuple[JobKind, ...], what: str) -> None:
    """404 for a job not of ``kinds``, ``what`` naming what it was asked for."""
    if job.kind not in kinds:
        raise ProblemError(
            404,
            f"Job {job.id} is {article(job.kind).lower()} {job.kind} job; only "
            f"{' and '.join(kinds)} jobs have {what}.",
            type_slug="not-found",
        )


def succeeded_job(
    session: SessionDep, owner_id: str, job_id: str, kinds: tuple[JobKind, ...], what: str
) -> Job:
    """The owner's job of one of ``kinds`` that has succeeded: 404 for another kind, 409
    before it succeeded, ``what`` naming what it was asked for."""
    job = get_owned_job(session, owner_id, job_id)
    refuse_other_kinds(job, kinds, what)
    if job.status != JobStatus.SUCCEEDED or job.result is None:
        raise ProblemError(
            409,
            f"Job {job.id} is {job.status}; its {what} exist once it has succeeded.",
            type_slug="job-not-finished",
        )
    return job


@router.get(
    "/{job_id}/plots/{name}.png",
    response_class=PNGResponse,
    responses=PLOT_RESPONSES,
    summary="A plot of an analyze job",
)
def read_plot(
    job_id: ResourceIdPath, name: str, owner: CurrentOwner, session: SessionDep
) -> PNGResponse:
    """Plot `name` (lmc, llfc or conditions) of the owner's succeeded analyze job, or `sweep`
    of a succeeded sweep job.

    `lmc`: loss and error against alpha; `llfc`: per-layer E[1 - cos_alpha] against
    E[1 - cos_AB]; `conditions`: Conditions I and II per layer. Naive against matched when the
    analysis matched. `sweep`: the sweep's matrices as heat maps.
    """
    job = get_owned_job(session, owner.id, job_id)
    # The kind first: a merge job asked for 'sweep' is told it has no plots, not that 'sweep'
    # is no plot of an analysis.
    refuse_other_kinds(job, (JobKind.ANALYZE, JobKind.SWEEP), "plots")
    if job.kind == JobKind.SWEEP:
        if name != SWEEP_PLOT:
            raise ProblemError(
                404,
                f"Job {job.id} is a sweep job; its one plot is '{SWEEP_PLOT}' "
                f"(/v1/jobs/{job.id}/plots/{SWEEP_PLOT}.png).",
                type_slug="not-found",
            )
        job = succeeded_job(session, owner.id, job_id, (JobKind.SWEEP,), "plots")
        assert job.result is not None
        png = render_sweep_plot(SweepResult.from_json(job.result))
        return PNGResponse(png, headers={"Cache-Control": CACHE_CONTROL})
    try:
        check_plot_name(name)
    except UnknownPlotError as error:
        raise ProblemError(404, error.message, type_slug="not-found") from error
    job = succeeded_job(session, owner.id, job_id, (JobKind.ANALYZE,), "plots")
    assert job.result is not None
    png = render_plot(AnalysisResult.from_json(job.result), name)
    return PNGResponse(png, headers={"Cache-Control": CACHE_CONTROL})


@router.get(
    "/{job_id}/result.csv",
    response_class=CSVResponse,
    responses=CSV_RESPONSES,
    summary="The result of an analyze or sweep job as CSV",
)
def read_result_csv(
    job_id: ResourceIdPath, owner: CurrentOwner, session: SessionDep
) -> CSVResponse:
    """Every number of the owner's succeeded analyze job, one line each: `pair,metric,layer,
    alpha,value`, the endpoints and the Lemma included (the CSV of `llfc results --format csv`);
    of a sweep job, every entry of its matrices: `pair,metric,model_a,model_b,value`."""
    kinds = (JobKind.ANALYZE, JobKind.SWEEP)
    job = succeeded_job(session, owner.id, job_id, kinds, "result rows")
    assert job.result is not None
    headers = {
        "Cache-Control": CACHE_CONTROL,
        "Content-Disposition": f'attachment; filename="{job.id}.csv"',
    }
    if job.kind == JobKind.SWEEP:
        return CSVResponse(sweep_csv(SweepResult.from_json(job.result)), headers=headers)
    return CSVResponse(analysis_csv(AnalysisResult.from_json(job.result)), headers=headers)
