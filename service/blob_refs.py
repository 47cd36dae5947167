"""References to stored blobs, added and dropped under a lock on the blob's ``blobs`` row.

Identical bytes are stored once, whoever uploaded them: one owner's checkpoint and another's
dataset may name the same blob. Adding a reference puts the blob in the store (a folder or a
bucket); dropping the last one removes it. Both happen while holding the blob's ``blobs`` row
(``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite every writing transaction is ``BEGIN
IMMEDIATE``, so writers take turns), so an upload of bytes that another owner is deleting either
finds the blob gone and puts it back, or makes the delete see its new reference and keep the
blob. Without the lock, the delete could count no references, the upload commit its row, and the
delete then remove that row's blob.

A blob file exists whenever a committed row names it. The converse may fail after a crash (a file
or ``blobs`` row nobody names any more, i.e. wasted space, never a missing file).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import exists, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from service.db.models import Blob, Checkpoint, Dataset, utcnow
from service.storage import BlobStore, hash_file


def keep_blob(session: Session, store: BlobStore, source: Path, sha256: str) -> None:
    """Move the validated file ``source`` into the store as blob ``sha256``, locking its row.

    The caller adds the row that names the blob in the same transaction and commits; the lock is
    held until then. Should that transaction roll back, the file stays in place with perhaps no
    ``blobs`` row and no reference: space wasted until the same bytes are kept again, never a
    row without its file.
    """
    # A bucket gets the bytes before the lock is taken, so the lock is not held through a long
    # upload; under the lock, commit only puts them back if a concurrent release removed them.
    store.prepare(source, sha256)
    _lock_or_create_blob_row(session, sha256)
    store.commit(source, sha256)


def keep_blob_file(session: Session, store: BlobStore, path: Path) -> tuple[str, int]:
    """:func:`keep_blob` for a file the service wrote itself; returns (sha256, size in bytes)."""
    sha256, size = hash_file(path)
    keep_blob(session, store, path, sha256)
    return sha256, size


def release_blob(session: Session, store: BlobStore, sha256: str) -> None:
    """Unlink blob ``sha256`` unless a checkpoint (its state dict or ONNX graph) or a dataset
    still names it.

    Commits the session first: the caller has deleted (and flushed) the row that named the blob,
    and that deletion must be durable before the file goes. Were the unlink done in the
    deleting transaction, a crash or failed commit after the unlink would roll the deletion back
    and leave a live row naming a missing file. Then, in a transaction of its own, the blob's
    row is locked, references are counted, and the file is unlinked while the lock is held,
    before the row is deleted and committed. A crash in that second transaction leaves at worst
    a ``blobs`` row without its file and without references, which the next :func:`keep_blob`
    of those bytes fills again; a crash between the two leaves an unreferenced file.

    No ``blobs`` row means nothing to release here: either another delete released it already,
    or an upload that has not committed yet is adding it (its row is invisible until then), and
    then the file is that upload's.
    """
    session.commit()
    blob = session.scalar(select(Blob).where(Blob.sha256 == sha256).with_for_update())
    if blob is None:
        session.commit()
        return
    still_named = session.scalar(
        select(
            exists().where(
                or_(Checkpoint.blob_sha256 == sha256, Checkpoint.graph_blob_sha256 == sha256)
            )
            | exists().where(or_(Dataset.sha256 == sha256, Dataset.blob_sha256 == sha256))
        )
    )
    if not still_named:
        store.delete(sha256)
        session.delete(blob)
    session.commit()


def _lock_or_create_blob_row(session: Session, sha256: str) -> None:
    """Hold blob ``sha256``'s row until the session commits, inserting it when there is none.

    On PostgreSQL the insert does nothing when the row exists, and the row is then locked. The
    lock returns no row when a concurrent release deleted it while we waited; the insert then
    succeeds on the next turn. An inserted row is ours until commit: a concurrent insert of
    the same key waits for it, and a release cannot see it.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    while True:
        session.execute(
            insert(Blob)
            .values(sha256=sha256, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=[Blob.sha256])
        )
        locked = session.scalar(select(Blob.sha256).where(Blob.sha256 == sha256).with_for_update())
        if locked is not None:
            return
