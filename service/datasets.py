"""Datasets: uploads (checked, kept as a normalised copy) and the built-ins, and how a job
reference resolves.

A job names its data as an upload's id or ``builtin:<name>``; :func:`dataset_shape` answers what
its examples look like without loading them, so a submission can be checked against the arch.
An upload is kept as a safetensors file of float32 ``x`` and int64 ``y`` (token sequences: one
int64 ``x``; the blob ``blob_sha256``, charged to the owner at its real size, ``stored_bytes``),
which workers memory-map and slice to the examples a job uses; the uploaded bytes themselves are
not kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llfc_core.data import (
    BUILTIN_DATASETS,
    builtin_installed,
    inspect_array_file,
    write_normalised,
)
from llfc_core.errors import DatasetError
from llfc_core.tasks import DataKind
from service.blob_refs import keep_blob
from service.checkpoints import display_name
from service.core.config import Settings
from service.db.models import Dataset, Job, new_id, utcnow
from service.deletion import delete_with_blob, refuse_if_used
from service.errors import NotFoundError
from service.quotas import check_stored_bytes
from service.schemas import RESOURCE_ID_PATTERN
from service.storage import BlobStore, IncomingBlob

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class DatasetShape:
    """What a submission needs to know about a dataset: its reference, example shape and
    kind (labelled examples or token sequences)."""

    ref: str
    input_shape: tuple[int, ...]
    num_classes: int
    builtin: bool
    kind: DataKind


def get_owned_dataset(session: Session, owner_id: str, dataset_id: str) -> Dataset:
    """The owner's uploaded dataset; NotFoundError also for another owner's."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.owner_id != owner_id:
        raise NotFoundError("dataset", dataset_id)
    return dataset


def is_builtin(ref: str) -> bool:
    return ref.startswith(BUILTIN_PREFIX)


def dataset_shape(session: Session, owner_id: str, ref: str, datasets_root: Path) -> DatasetShape:
    """Resolve a job's dataset reference; an unknown one, or a built-in whose files are not in
    ``datasets_root``, is a :class:`DatasetError` (422)."""
    if not isinstance(ref, str) or not re.fullmatch(RESOURCE_ID_PATTERN, ref):
        raise DatasetError(
            f"The dataset reference {ref!r} is not a dataset id; give an uploaded dataset's id "
            "or a built-in such as 'builtin:digits'."
        )
    if is_builtin(ref):
        name = ref[len(BUILTIN_PREFIX) :]
        builtin = BUILTIN_DATASETS.get(name)
        if builtin is None:
            known = ", ".join(BUILTIN_PREFIX + key for key in sorted(BUILTIN_DATASETS))
            raise DatasetError(f"Unknown built-in dataset {ref!r}; the built-ins are {known}.")
        if not builtin_installed(name, datasets_root):
            raise DatasetError(
                f"The built-in dataset {ref!r} is not installed on this service and nothing is "
                f"downloaded; an operator must {builtin.installing} inside the service's "
                "datasets folder (LLFC_DATASETS_ROOT). Meanwhile, upload the data as a dataset."
            )
        return DatasetShape(
            ref, tuple(builtin.input_shape), builtin.num_classes, True, builtin.kind
        )
    dataset = session.get(Dataset, ref)
    if dataset is None or dataset.owner_id != owner_id:
        raise DatasetError(
            f"No dataset with id {ref!r} exists; upload one to /v1/datasets or use a built-in "
            "such as 'builtin:digits'."
        )
    return DatasetShape(
        ref, tuple(dataset.input_shape), dataset.num_classes, False, dataset_kind(dataset)
    )


def dataset_kind(dataset: Dataset) -> DataKind:
    """What an uploaded dataset's row says it holds."""
    return "tokens" if dataset.kind == "tokens" else "labelled"


def ingest_dataset(
    session: Session,
    store: BlobStore,
    settings: Settings,
    owner_id: str,
    incoming: IncomingBlob,
    name: str | None,
    filename: str | None,
) -> tuple[Dataset, bool]:
    """Check an uploaded ``.npz``/``.safetensors`` file and keep its normalised copy; returns
    (dataset, created).

    Checking and converting take as long as the file is large, so they run with no transaction
    open: in embedded mode an open one would hold SQLite's only write lock, and every other
    writer (another owner's cancel, a running job's heartbeat) would wait for this upload. The
    storage quota, the blob reference and the new row are then one short transaction.
    """
    with incoming:
        sha256 = incoming.finish()
        existing = _owned_upload(session, owner_id, sha256)
        session.commit()
        if existing is not None:
            return existing, False
        arrays = inspect_array_file(
            incoming.path, settings.max_upload_bytes, settings.max_dataset_expansion
        )
        # Refused before writing a byte when the copy cannot fit; checked again when it is kept.
        check_stored_bytes(session, settings, owner_id, arrays.normalised_bytes, "this upload")
        session.commit()
        with store.incoming(arrays.normalised_bytes, ".safetensors") as normalised:
            num_classes = write_normalised(arrays, normalised)
            dataset = Dataset(
                id=new_id("ds"),
                owner_id=owner_id,
                name=display_name(name, filename, f"dataset-{sha256[:12]}"),
                sha256=sha256,
                format=arrays.format,
                num_examples=arrays.num_examples,
                input_shape=list(arrays.input_shape),
                num_classes=num_classes,
                kind=arrays.kind,
                size_bytes=incoming.size,
                blob_sha256=normalised.finish(),
                stored_bytes=normalised.size,
                created_at=utcnow(),
            )
            return _record(session, store, settings, normalised.path, dataset)


def _owned_upload(session: Session, owner_id: str, sha256: str) -> Dataset | None:
    return session.scalar(
        select(Dataset).where(Dataset.owner_id == owner_id, Dataset.sha256 == sha256)
    )


def _record(
    session: Session, store: BlobStore, settings: Settings, normalised: Path, dataset: Dataset
) -> tuple[Dataset, bool]:
    """The short transaction of an upload: quota, blob reference and row, committed together."""
    assert dataset.blob_sha256 is not None and dataset.stored_bytes is not None
    check_stored_bytes(session, settings, dataset.owner_id, dataset.stored_bytes, "this upload")
    keep_blob(session, store, normalised, dataset.blob_sha256)
    session.add(dataset)
    try:
        session.commit()
    except IntegrityError:
        # The same owner uploaded the same bytes concurrently and committed first.
        session.rollback()
        concurrent = _owned_upload(session, dataset.owner_id, dataset.sha256)
        session.commit()
        if concurrent is None:
            raise
        return concurrent, False
    return dataset, True


def delete_dataset(session: Session, store: BlobStore, dataset: Dataset) -> None:
    """Delete an uploaded dataset unless a queued or running job uses it, as its evaluation or
    its training data (409)."""
    uses = (Job.dataset_ref == dataset.id) | (Job.train_dataset_ref == dataset.id)
    refuse_if_used(session, dataset.owner_id, uses, f"Dataset {dataset.id}")
    delete_with_blob(session, store, dataset, Dataset.sha256, Dataset.blob_sha256)
