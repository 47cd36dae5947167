"""/v1/checkpoints: upload, list, read, download and delete model checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse

from service.api.deps import CurrentOwner, ResourceIdPath, SessionDep, SettingsDep, StoreDep
from service.api.pagination import DEFAULT_PAGE_SIZE, CursorQuery, LimitQuery, owned_page
from service.api.problems import problem_responses
from service.api.uploads import receive_upload
from service.checkpoints import delete_checkpoint, get_owned_checkpoint, ingest_checkpoint
from service.db.models import Checkpoint
from service.schemas import CheckpointPublic, CheckpointsPublic

router = APIRouter(
    prefix="/v1/checkpoints", tags=["checkpoints"], responses=problem_responses(401, 422)
)

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "arch"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A .safetensors file or a PyTorch state dict "
                            "(.pt/.pth, read with torch.load(weights_only=True)).",
                        },
                        "arch": {
                            "type": "string",
                            "description": 'JSON text, e.g. {"name": "mlp", "widths": [64, 10]}.',
                        },
                        "name": {"type": "string"},
                        "key_map": {
                            "type": "string",
                            "description": "Renames the file's tensors to the arch's names: "
                            "by_order (the renaming a checkpoint-mismatch answer suggests), or "
                            'JSON text {"name in the file": "arch name", ...}.',
                        },
                    },
                }
            }
        },
    }
}


def checkpoint_public(checkpoint: Checkpoint) -> CheckpointPublic:
    return CheckpointPublic.model_validate(checkpoint, from_attributes=True)


@router.post(
    "",
    status_code=201,
    response_model=CheckpointPublic,
    openapi_extra=UPLOAD_BODY,
    responses=problem_responses(413, 415, 507),
)
async def upload_checkpoint(
    request: Request,
    owner: CurrentOwner,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> CheckpointPublic:
    """Upload a checkpoint; it is validated against `arch` and stored as safetensors.

    The same bytes uploaded again with the same arch give back the same checkpoint; with another
    arch they fit, another checkpoint sharing the stored blob. A file that does not fit the arch
    is refused with 422 naming the missing, unexpected and mis-shaped tensors, and the renaming
    under which it would fit (`suggested_key_map`) when there is one; `key_map` applies it.
    """
    upload = await receive_upload(
        request, store, settings.max_upload_bytes, ("arch", "name", "key_map")
    )
    checkpoint, _created = await run_in_threadpool(
        ingest_checkpoint,
        session,
        store,
        settings,
        owner.id,
        upload.file,
        upload.fields.get("arch"),
        upload.fields.get("name"),
        upload.filename,
        upload.fields.get("key_map"),
    )
    return checkpoint_public(checkpoint)


@router.get("", response_model=CheckpointsPublic)
def list_checkpoints(
    owner: CurrentOwner,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_PAGE_SIZE,
    cursor: CursorQuery = None,
) -> CheckpointsPublic:
    """The owner's checkpoints, newest first, uploads and job artifacts alike."""
    items, next_cursor = owned_page(session, Checkpoint, owner.id, limit, cursor, checkpoint_public)
    return CheckpointsPublic(items=items, next_cursor=next_cursor)


@router.get("/{checkpoint_id}", response_model=CheckpointPublic, responses=problem_responses(404))
def read_checkpoint(
    checkpoint_id: ResourceIdPath, owner: CurrentOwner, session: SessionDep
) -> CheckpointPublic:
    """One checkpoint's description."""
    return checkpoint_public(get_owned_checkpoint(session, owner.id, checkpoint_id))


@router.get(
    "/{checkpoint_id}/file",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "headers": {
                "X-Checkpoint-Sha256": {
                    "description": "sha256 of the file.",
                    "schema": {"type": "string"},
                },
                "X-Checkpoint-Key-Map": {
                    "description": "applied: the upload's key_map renamed tensors (the "
                    "checkpoint's key_map lists them); none: the names are the file's as "
                    "uploaded. Either way they are the arch's.",
                    "schema": {"type": "string", "enum": ["applied", "none"]},
                },
            },
        },
        **problem_responses(404),
    },
)
def download_checkpoint(
    checkpoint_id: ResourceIdPath, owner: CurrentOwner, session: SessionDep, store: StoreDep
) -> Response:
    """The checkpoint's tensors as a safetensors file (float32, the arch's names and order)."""
    checkpoint = get_owned_checkpoint(session, owner.id, checkpoint_id)
    session.commit()
    filename = f"{checkpoint.id}.safetensors"
    headers = {
        "X-Checkpoint-Sha256": checkpoint.blob_sha256,
        "X-Checkpoint-Key-Map": "applied" if checkpoint.key_map else "none",
    }
    download = store.download(checkpoint.blob_sha256)
    if isinstance(download, Path):
        return FileResponse(
            download, media_type="application/octet-stream", filename=filename, headers=headers
        )
    # From a bucket: streamed as it is read, with the headers a file response would send.
    headers["Content-Length"] = str(download.size)
    headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return StreamingResponse(
        download.chunks, media_type="application/octet-stream", headers=headers
    )


@router.delete(
    "/{checkpoint_id}",
    status_code=204,
    responses=problem_responses(404, 409, s409="A queued or running job uses it."),
)
def remove_checkpoint(
    checkpoint_id: ResourceIdPath, owner: CurrentOwner, session: SessionDep, store: StoreDep
) -> Response:
    """Delete a checkpoint; 409 while a queued or running job uses it."""
    delete_checkpoint(session, store, get_owned_checkpoint(session, owner.id, checkpoint_id))
    return Response(status_code=204)
