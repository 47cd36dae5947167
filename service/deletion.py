"""Deleting what an owner stored (a checkpoint or a dataset): refused while a job needs it, and
its blob deleted with the last row that names it (identical bytes are stored once, for everyone).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from service.blob_refs import release_blob
from service.db.models import ACTIVE_STATUSES, Base, Job
from service.errors import InUseError
from service.storage import BlobStore


def refuse_if_used(
    session: Session, owner_id: str, uses: ColumnElement[bool], described: str
) -> None:
    """Refuse (InUseError) naming the owner's first queued or running job for which ``uses`` holds.

    ``described`` names the row in the sentence, e.g. ``"Checkpoint ckpt_..."``.
    """
    user = session.scalar(
        select(Job.id).where(Job.owner_id == owner_id, Job.status.in_(ACTIVE_STATUSES), uses)
    )
    if user is not None:
        raise InUseError(
            f"{described} is used by job {user}, which is queued or running; cancel it or wait "
            "for it to finish first."
        )


def delete_with_blob(
    session: Session,
    store: BlobStore,
    row: Base,
    *blob_columns: InstrumentedAttribute[str] | InstrumentedAttribute[str | None],
) -> None:
    """Delete ``row`` and commit, then release each blob its ``blob_columns`` name (the file
    goes with the last row naming it; see :func:`service.blob_refs.release_blob`)."""
    named = {getattr(row, column.key) for column in blob_columns} - {None}
    session.delete(row)
    session.flush()
    for blob_sha256 in sorted(named):
        release_blob(session, store, blob_sha256)
