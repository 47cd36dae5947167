"""/v1/datasets: upload, list (uploads and built-ins), read and delete datasets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from llfc_core.data import BUILTIN_DATASETS, builtin_installed
from service.api.deps import CurrentOwner, ResourceIdPath, SessionDep, SettingsDep, StoreDep
from service.api.pagination import DEFAULT_PAGE_SIZE, CursorQuery, LimitQuery, owned_page
from service.api.problems import problem_responses
from service.api.uploads import receive_upload
from service.core.config import Settings
from service.datasets import (
    BUILTIN_PREFIX,
    dataset_kind,
    delete_dataset,
    get_owned_dataset,
    ingest_dataset,
)
from service.db.models import Dataset
from service.errors import NotFoundError
from service.schemas import DatasetPublic, DatasetsPublic

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=problem_responses(401, 422))

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".npz or .safetensors holding 'x' (N x ...) and "
                            "'y' (N integer class labels), or token sequences: an integer 'x' "
                            "(N x T token ids) and no 'y'.",
                        },
                        "name": {"type": "string"},
                    },
                }
            }
        },
    }
}


def dataset_public(dataset: Dataset) -> DatasetPublic:
    return DatasetPublic(
        id=dataset.id,
        name=dataset.name,
        num_examples=dataset.num_examples,
        input_shape=list(dataset.input_shape),
        num_classes=dataset.num_classes,
        kind=dataset_kind(dataset),
        sha256=dataset.sha256,
        builtin=False,
        format=dataset.format,
        size_bytes=dataset.size_bytes,
        stored_bytes=dataset.stored_bytes,
        created_at=dataset.created_at,
    )


def builtin_datasets(settings: Settings) -> list[DatasetPublic]:
    """The built-ins, each saying whether its files are in the service's datasets folder."""
    return [
        DatasetPublic(
            id=BUILTIN_PREFIX + name,
            name=name,
            num_examples=None,
            input_shape=list(builtin.input_shape),
            num_classes=builtin.num_classes,
            kind=builtin.kind,
            sha256=None,
            builtin=True,
            description=builtin.description,
            installed=builtin_installed(name, settings.resolved_datasets_root),
        )
        for name, builtin in sorted(BUILTIN_DATASETS.items())
    ]


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    openapi_extra=UPLOAD_BODY,
    responses=problem_responses(413, 415, 507),
)
async def upload_dataset(
    request: Request,
    owner: CurrentOwner,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> DatasetPublic:
    """Upload arrays `x` and `y`, or token sequences `x` alone; checked (shapes, finite values,
    integer labels or token ids) and kept as a normalised copy (float32 `x`, int64 `y`; int64
    `x` for tokens), charged to the owner at its size, `stored_bytes`."""
    upload = await receive_upload(request, store, settings.max_upload_bytes, ("name",))
    dataset, _created = await run_in_threadpool(
        ingest_dataset,
        session,
        store,
        settings,
        owner.id,
        upload.file,
        upload.fields.get("name"),
        upload.filename,
    )
    return dataset_public(dataset)


@router.get("", response_model=DatasetsPublic)
def list_datasets(
    owner: CurrentOwner,
    session: SessionDep,
    settings: SettingsDep,
    limit: LimitQuery = DEFAULT_PAGE_SIZE,
    cursor: CursorQuery = None,
) -> DatasetsPublic:
    """The built-ins (on the first page) and the owner's uploads, newest first."""
    uploads, next_cursor = owned_page(session, Dataset, owner.id, limit, cursor, dataset_public)
    builtins = builtin_datasets(settings) if cursor is None else []
    return DatasetsPublic(items=builtins + uploads, next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=problem_responses(404))
def read_dataset(
    dataset_id: ResourceIdPath, owner: CurrentOwner, session: SessionDep, settings: SettingsDep
) -> DatasetPublic:
    """One dataset: an upload's id or `builtin:<name>`."""
    if dataset_id.startswith(BUILTIN_PREFIX):
        for builtin in builtin_datasets(settings):
            if builtin.id == dataset_id:
                return builtin
        raise NotFoundError("dataset", dataset_id)
    return dataset_public(get_owned_dataset(session, owner.id, dataset_id))


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses=problem_responses(404, 409, s409="A queued or running job uses it."),
)
def remove_dataset(
    dataset_id: ResourceIdPath, owner: CurrentOwner, session: SessionDep, store: StoreDep
) -> Response:
    """Delete an uploaded dataset; 409 while a queued or running job uses it."""
    delete_dataset(session, store, get_owned_dataset(session, owner.id, dataset_id))
    return Response(status_code=204)
