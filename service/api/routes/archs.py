"""/v1/archs/inspect: an arch's permutation symmetries, found from its graph and proved."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic_core import PydanticCustomError

from llfc_core.errors import ArchitectureError
from service.api.deps import CurrentOwner, SettingsDep
from service.api.json_body import json_body, json_body_openapi
from service.api.problems import problem_responses
from service.archs import inspect_arch
from service.schemas import ArchInspect, ArchReport

router = APIRouter(prefix="/v1/archs", tags=["archs"], responses=problem_responses(401, 422))

ArchInspectBody = Annotated[ArchInspect, Depends(json_body(ArchInspect))]


@router.post(
    "/inspect",
    response_model=ArchReport,
    openapi_extra=json_body_openapi(ArchInspect),
    responses=problem_responses(
        400,
        413,
        415,
        503,
        s413="The JSON body is larger than 1 MiB.",
        s415="The body is not application/json.",
        s503="Another inspection is proving its spec in this API process.",
    ),
)
def inspect(body: ArchInspectBody, owner: CurrentOwner, settings: SettingsDep) -> ArchReport:
    """The arch's parameter count, its permutation groups (size, the tensor axes each acts
    on), the axes left in place and the op that stopped each, the feature layers LLFC measures
    and the proof: permuting random weights by random permutations from the spec must leave
    the outputs unchanged. Nothing is downloaded; only the zoos' and built-in code runs."""
    try:
        arch = body.arch_json()
    except PydanticCustomError as error:
        raise ArchitectureError(f"The inspect body: {error}.") from error
    return ArchReport.model_validate(inspect_arch(arch, body.prove, settings))
