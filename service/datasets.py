"""Datasets: uploads (kept as is, by hash) and the built-ins, and how a job reference resolves.

A job names its data as an upload's id or ``builtin:<name>``; :func:`dataset_shape` answers what
its examples look like without loading them, so a submission can be checked against the arch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llfc_core.data import BUILTIN_DATASETS, read_arrays
from llfc_core.errors import DatasetError
from service.api.problems import not_found
from service.checkpoints import display_name
from service.core.config import Settings
from service.db.models import Dataset, Job, new_id, utcnow
from service.deletion import delete_with_blob, refuse_if_used
from service.quotas import check_stored_bytes
from service.schemas import RESOURCE_ID_PATTERN
from service.storage import BlobStore, IncomingBlob

BUILTIN_PREFIX = "builtin:"
ZIP_MAGIC = b"PK"


@dataclass(frozen=True)
class DatasetShape:
    """What a submission needs to know about a dataset: its reference and example shape."""

    ref: str
    input_shape: tuple[int, ...]
    num_classes: int
    builtin: bool


def get_owned_dataset(session: Session, owner_id: str, dataset_id: str) -> Dataset:
    """The owner's uploaded dataset, or 404 (also for another owner's)."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.owner_id != owner_id:
        raise not_found("dataset", dataset_id)
    return dataset


def dataset_shape(session: Session, owner_id: str, ref: str) -> DatasetShape:
    """Resolve a job's dataset reference; an unknown one is a :class:`DatasetError` (422)."""
    if not isinstance(ref, str) or not re.fullmatch(RESOURCE_ID_PATTERN, ref):
        raise DatasetError(
            f"The dataset reference {ref!r} is not a dataset id; give an uploaded dataset's id "
            "or a built-in such as 'builtin:digits'."
        )
    if ref.startswith(BUILTIN_PREFIX):
        name = ref[len(BUILTIN_PREFIX) :]
        builtin = BUILTIN_DATASETS.get(name)
        if builtin is None:
            known = ", ".join(BUILTIN_PREFIX + key for key in sorted(BUILTIN_DATASETS))
            raise DatasetError(f"Unknown built-in dataset {ref!r}; the built-ins are {known}.")
        return DatasetShape(ref, tuple(builtin.input_shape), builtin.num_classes, True)
    dataset = session.get(Dataset, ref)
    if dataset is None or dataset.owner_id != owner_id:
        raise DatasetError(
            f"No dataset with id {ref!r} exists; upload one to /v1/datasets or use a built-in "
            "such as 'builtin:digits'."
        )
    return DatasetShape(ref, tuple(dataset.input_shape), dataset.num_classes, False)


def ingest_dataset(
    session: Session,
    store: BlobStore,
    settings: Settings,
    owner_id: str,
    incoming: IncomingBlob,
    name: str | None,
    filename: str | None,
) -> tuple[Dataset, bool]:
    """Check an uploaded ``.npz``/``.safetensors`` file and keep it; returns (dataset, created)."""
    with incoming:
        sha256 = incoming.finish()
        existing = session.scalar(
            select(Dataset).where(Dataset.owner_id == owner_id, Dataset.sha256 == sha256)
        )
        session.commit()
        if existing is not None:
            return existing, False
        check_stored_bytes(session, settings, owner_id, incoming.size, "this upload")
        arrays = read_arrays(incoming.path, max_bytes=settings.max_upload_bytes)
        if arrays.num_examples == 0:
            raise DatasetError("The dataset holds no examples; 'x' and 'y' must not be empty.")
        with incoming.path.open("rb") as handle:
            file_format = "npz" if handle.read(2) == ZIP_MAGIC else "safetensors"
        store.commit(incoming.path, sha256)
        dataset = Dataset(
            id=new_id("ds"),
            owner_id=owner_id,
            name=display_name(name, filename, f"dataset-{sha256[:12]}"),
            sha256=sha256,
            format=file_format,
            num_examples=arrays.num_examples,
            input_shape=list(arrays.input_shape),
            num_classes=arrays.num_classes,
            size_bytes=incoming.size,
            created_at=utcnow(),
        )
    session.add(dataset)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        concurrent = session.scalar(
            select(Dataset).where(Dataset.owner_id == owner_id, Dataset.sha256 == sha256)
        )
        if concurrent is None:
            raise
        return concurrent, False
    return dataset, True


def delete_dataset(session: Session, store: BlobStore, dataset: Dataset) -> None:
    """Delete an uploaded dataset unless a queued or running job uses it (409)."""
    uses = Job.dataset_ref == dataset.id
    refuse_if_used(session, dataset.owner_id, uses, f"Dataset {dataset.id}")
    delete_with_blob(session, store, dataset, Dataset.sha256)
