"""/v1/jobs/{id}/pairs: a succeeded sweep's results per pair, as its sweep_pairs rows."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path
from sqlalchemy import select, tuple_

from llfc_results import SWEEP_METRICS
from service.api.deps import CurrentOwner, ResourceIdPath, SessionDep
from service.api.pagination import DEFAULT_PAGE_SIZE, CursorQuery, LimitQuery, unknown_cursor
from service.api.problems import ProblemError, problem_responses
from service.api.routes.plots import succeeded_job
from service.db.models import JobKind, SweepPair
from service.schemas import SweepMetricsPublic, SweepPairPublic, SweepPairsPublic

router = APIRouter(prefix="/v1/jobs", tags=["sweeps"], responses=problem_responses(401, 422))

PAIR_RESPONSES = problem_responses(
    404,
    409,
    s404="No such job of the caller, not a sweep job, or no such pair of it.",
    s409="The sweep has not succeeded (yet), so it has no pairs.",
)
CURSOR = re.compile(r"^(\d{1,4})-(\d{1,4})$")
"""A page's cursor: ``<index_a>-<index_b>`` of the last pair shown (a sweep's rows never change
once it succeeded, so the position alone is a stable cursor)."""
ModelIndex = Annotated[int, Path(ge=0, le=9999, description="A position in the job's models.")]


def _metrics(row: SweepPair, kind: str) -> SweepMetricsPublic | None:
    """The row's numbers of pair kind ``kind``; None when its analysis has no such pair."""
    if kind not in row.analysis["pairs"]:
        return None
    return SweepMetricsPublic(
        **{metric: getattr(row, f"{kind}_{metric}") for metric in SWEEP_METRICS}
    )


def _public(row: SweepPair) -> SweepPairPublic:
    naive = _metrics(row, "naive")
    assert naive is not None
    return SweepPairPublic(
        index_a=row.index_a,
        index_b=row.index_b,
        model_a=row.model_a_id,
        model_b=row.model_b_id,
        naive=naive,
        matched=_metrics(row, "matched"),
    )


@router.get(
    "/{job_id}/pairs",
    response_model=SweepPairsPublic,
    responses=PAIR_RESPONSES,
    summary="The pairs of a sweep job",
)
def list_pairs(
    job_id: ResourceIdPath,
    owner: CurrentOwner,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_PAGE_SIZE,
    cursor: CursorQuery = None,
) -> SweepPairsPublic:
    """Every unordered pair of the owner's succeeded sweep job, ordered by (index_a, index_b):
    its models and its matrix numbers, naive and matched. The pair's whole analysis is at
    `/v1/jobs/{id}/pairs/{index_a}/{index_b}`."""
    succeeded_job(session, owner.id, job_id, (JobKind.SWEEP,), "pairs")
    statement = select(SweepPair).where(SweepPair.job_id == job_id)
    if cursor is not None:
        position = CURSOR.fullmatch(cursor)
        if position is None:
            raise unknown_cursor()
        after = (int(position[1]), int(position[2]))
        statement = statement.where(tuple_(SweepPair.index_a, SweepPair.index_b) > after)
    statement = statement.order_by(SweepPair.index_a, SweepPair.index_b).limit(limit + 1)
    rows = list(session.scalars(statement))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = f"{rows[-1].index_a}-{rows[-1].index_b}"
    return SweepPairsPublic(items=[_public(row) for row in rows], next_cursor=next_cursor)


@router.get(
    "/{job_id}/pairs/{index_a}/{index_b}",
    responses=PAIR_RESPONSES,
    summary="One pair's analysis in a sweep job",
)
def read_pair(
    job_id: ResourceIdPath,
    index_a: ModelIndex,
    index_b: ModelIndex,
    owner: CurrentOwner,
    session: SessionDep,
) -> dict[str, Any]:
    """The analyze result (as an analyze job of model `index_a` as A and model `index_b` as B
    gives it) of one pair of the owner's succeeded sweep job; `index_a < index_b`."""
    succeeded_job(session, owner.id, job_id, (JobKind.SWEEP,), "pairs")
    row = session.get(SweepPair, (job_id, index_a, index_b))
    if row is None:
        raise ProblemError(
            404,
            f"Sweep {job_id} has no pair ({index_a}, {index_b}); its pairs are (i, j) with "
            "i < j, positions in its models.",
            type_slug="not-found",
        )
    return row.analysis
