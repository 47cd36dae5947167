"""Checkpoints: accepting an upload, storing a job's output, deleting, all in one place.

Every stored checkpoint went through ``llfc_core.checkpoints.validate_state_dict`` against its
arch and is kept as a float32 safetensors blob, whatever format it arrived in. An upload that
already is exactly that blob (``llfc_core.checkpoints.is_stored_form``: the arch's tensors as
F32/I64 safetensors, all finite) is kept as it arrived, checked in chunks rather than loaded.

An upload may carry a ``key_map`` (``llfc_core.key_maps``): its tensors are then renamed to the
arch's names before validation, the blob holds the arch's names, and the row keeps the renaming
applied.

An ``.onnx`` upload (arch ``{"name": "onnx"}``, ``llfc_core.archs.onnx_graph``) is the model
itself: its weights become the state-dict blob like any upload's, and its graph, weights stripped,
a second blob (``graph_blob_sha256``) from which the arch is rebuilt for every job
(:func:`checkpoint_arch`); the row's arch is ``{"name": "onnx", "graph_sha256": ...}``.

A checkpoint is identified by its owner, its uploaded bytes and its arch: the same bytes fitting
two archs are two checkpoints sharing one blob. Validation runs with no database transaction
open (in embedded mode an open writing transaction holds SQLite's one write lock); the quota
check, the blob reference and the insert then take one short transaction.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, Literal

import torch
from sqlalchemy import Text, cast, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llfc_core.archs import (
    Architecture,
    OnnxArchitecture,
    onnx_architecture_from_file,
    parse_arch,
)
from llfc_core.checkpoints import (
    CheckpointFormat,
    is_stored_form,
    read_checkpoint,
    save_safetensors,
    torch_load_is_safe,
    unsafe_torch_load_sentence,
    validate_state_dict,
)
from llfc_core.errors import ArchitectureError, KeyMapError
from llfc_core.key_maps import BY_ORDER, KeyMapRequest, fit_state_dict, key_order, parse_key_map
from llfc_core.permutation import StateDict
from service.blob_refs import keep_blob, keep_blob_file
from service.core.config import Settings
from service.db.models import Checkpoint, Job, arch_key, new_id, utcnow
from service.deletion import delete_with_blob, refuse_if_used
from service.errors import KeyMapConflictError, NotFoundError
from service.json_input import JsonInputError, parse_json
from service.quotas import check_stored_bytes
from service.storage import BlobStore, IncomingBlob, hash_file

MAX_NAME_LENGTH = 200
StoredFormat = CheckpointFormat | Literal["onnx"]
"""The format a checkpoint was uploaded in (the ``format`` of its JSON)."""

logger = logging.getLogger(__name__)


def warn_if_torch_files_are_refused() -> None:
    """Log, once at start, that this torch is too old to read ``.pt`` uploads safely (they are
    then refused; safetensors uploads are still accepted)."""
    if not torch_load_is_safe():
        logger.warning("PyTorch checkpoint uploads are refused. %s", unsafe_torch_load_sentence())


def display_name(requested: str | None, filename: str | None, fallback: str) -> str:
    """A name for people: the one given, else the uploaded file's stem (never used as a path).

    Control characters are dropped: they have no place in a label, and PostgreSQL refuses to
    store a NUL byte at all.
    """
    if requested and (cleaned := _without_control_characters(requested).strip()):
        return cleaned[:MAX_NAME_LENGTH]
    if filename:
        stem = PurePath(_without_control_characters(filename).replace("\\", "/")).stem.strip()
        if stem:
            return stem[:MAX_NAME_LENGTH]
    return fallback


def _without_control_characters(text: str) -> str:
    return "".join(char for char in text if unicodedata.category(char) != "Cc")


def parse_arch_text(arch_text: str | None, settings: Settings) -> Architecture:
    """The ``arch`` form field (JSON text) as an architecture, or a 422 saying what is wrong."""
    return parse_arch(_arch_spec(arch_text), max_params=settings.max_params)


def _arch_spec(arch_text: str | None) -> Any:
    """The ``arch`` form field's JSON value, or a 422 saying what is wrong with the text."""
    if arch_text is None or not arch_text.strip():
        raise ArchitectureError(
            'The upload needs an \'arch\' field: JSON such as {"name": "mlp", "widths": [64, 10]}.'
        )
    try:
        return parse_json(arch_text)
    except JsonInputError as error:
        raise ArchitectureError(f"The 'arch' field {error}.") from error


def _is_onnx(spec: Any) -> bool:
    return isinstance(spec, Mapping) and spec.get("name") == OnnxArchitecture.name


def _read_onnx_upload(
    path: Path, spec: Mapping[str, Any], key_map: KeyMapRequest, settings: Settings
) -> tuple[OnnxArchitecture, StateDict]:
    """The arch and validated weights of an ``.onnx`` upload whose arch field is ``spec``."""
    if key_map is not None:
        raise KeyMapError(
            "An ONNX upload takes no key_map: its tensors are named by the file's initializers."
        )
    arch, state = onnx_architecture_from_file(path, settings.max_upload_bytes)
    # The arch field's other fields (a graph_sha256, typos) and the size limit, checked as for
    # any arch, on the graph the file holds.
    checked = parse_arch(spec, max_params=settings.max_params, onnx_graph=arch.graph)
    assert isinstance(checked, OnnxArchitecture)
    return checked, validate_state_dict(checked, state)


def checkpoint_arch(store: BlobStore, checkpoint: Checkpoint, settings: Settings) -> Architecture:
    """The arch of a stored checkpoint: its JSON, with its graph for an ONNX one."""
    graph = (
        None
        if checkpoint.graph_blob_sha256 is None
        else store.read_bytes(checkpoint.graph_blob_sha256)
    )
    return parse_arch(checkpoint.arch, max_params=settings.max_params, onnx_graph=graph)


def job_arch(session: Session, store: BlobStore, job: Job, settings: Settings) -> Architecture:
    """The arch a job runs on: its JSON, with the graph of model A (whose arch it is) for an
    ONNX one."""
    assert job.arch is not None
    model_a = None if job.model_a_id is None else session.get(Checkpoint, job.model_a_id)
    if model_a is None or model_a.arch != job.arch:
        return parse_arch(job.arch, max_params=settings.max_params)
    return checkpoint_arch(store, model_a, settings)


def _keep_graph(session: Session, store: BlobStore, arch: Architecture) -> str | None:
    """Keep an ONNX arch's graph as a blob (locked like any blob the row about to be inserted
    names) and return its sha256; None for other archs."""
    if not isinstance(arch, OnnxArchitecture):
        return None
    written = store.temporary_path(".onnx")
    try:
        written.write_bytes(arch.graph)
        graph_sha256, _size = keep_blob_file(session, store, written)
    finally:
        written.unlink(missing_ok=True)
    return graph_sha256


def parse_key_map_text(key_map_text: str | None) -> KeyMapRequest:
    """The ``key_map`` form field: absent, ``by_order`` (bare or as a JSON string), or a JSON
    object ``{name in the file: arch name}``; a 422 sentence otherwise."""
    if key_map_text is None or not key_map_text.strip():
        return None
    if key_map_text.strip() == BY_ORDER:
        return BY_ORDER
    try:
        value: Any = parse_json(key_map_text)
    except JsonInputError as error:
        raise KeyMapError(
            f"The 'key_map' field {error}; send by_order or a JSON object of tensor names."
        ) from error
    return parse_key_map(value)


def get_owned_checkpoint(session: Session, owner_id: str, checkpoint_id: str) -> Checkpoint:
    """The owner's checkpoint; NotFoundError also for another owner's."""
    checkpoint = session.get(Checkpoint, checkpoint_id)
    if checkpoint is None or checkpoint.owner_id != owner_id:
        raise NotFoundError("checkpoint", checkpoint_id)
    return checkpoint


def _same_bytes_and_arch(
    session: Session, owner_id: str, sha256: str, arch: Architecture
) -> Checkpoint | None:
    """The owner's checkpoint of these uploaded bytes under this arch, if there is one."""
    return session.scalar(
        select(Checkpoint).where(
            Checkpoint.owner_id == owner_id,
            Checkpoint.sha256 == sha256,
            Checkpoint.arch_key == arch_key(arch.to_json()),
        )
    )


def ingest_checkpoint(
    session: Session,
    store: BlobStore,
    settings: Settings,
    owner_id: str,
    incoming: IncomingBlob,
    arch_text: str | None,
    name: str | None,
    filename: str | None,
    key_map_text: str | None = None,
) -> tuple[Checkpoint, bool]:
    """Validate an uploaded file against its arch and store it; returns (checkpoint, created).

    An upload in the stored form becomes the blob itself (blob sha256 = upload sha256); any
    other file is loaded, renamed by its key_map, cleaned and re-written; an ``.onnx`` file (arch
    ``{"name": "onnx"}``, no key_map) is split into that and its graph's blob. The same bytes
    uploaded again by the same owner with the same arch give back the existing checkpoint, once a
    key_map sent with them is found to rename them as the existing one did (409 when it does
    not); with another arch they are validated against it like any upload (422 when they do not
    fit).
    """
    with incoming:
        sha256 = incoming.finish()
        spec = _arch_spec(arch_text)
        key_map = parse_key_map_text(key_map_text)
        arch: Architecture
        fitted: StateDict | None = None
        if _is_onnx(spec):
            # The file is the arch: read (and validated) before anything else.
            arch, fitted = _read_onnx_upload(incoming.path, spec, key_map, settings)
        else:
            arch = parse_arch(spec, max_params=settings.max_params)
        existing = _same_bytes_and_arch(session, owner_id, sha256, arch)
        # From here to the insert no transaction is open: validation may take seconds.
        session.commit()
        if existing is not None and key_map is None:
            return existing, False
        file_format: StoredFormat
        applied: dict[str, str] = {}
        # An explicit map may rename the arch's names among themselves, so it takes the general
        # path; "by_order" leaves a file with the arch's names as it is.
        if isinstance(arch, OnnxArchitecture):
            file_format = "onnx"
        elif not isinstance(key_map, Mapping) and is_stored_form(arch, incoming.path):
            file_format = "safetensors"
        else:
            state, file_format = read_checkpoint(incoming.path, arch)
            fitted, applied = fit_state_dict(arch, state, key_map, key_order(file_format))
            _check_recordable(applied)
        if existing is not None:
            return _same_renaming(existing, applied), False
        if fitted is None:
            # Already the float32 safetensors file we would write: keep the uploaded bytes.
            blob_source, blob_sha256 = incoming.path, sha256
        else:
            blob_source = _write_state(store, fitted)
            blob_sha256, _size = hash_file(blob_source)
        try:
            check_stored_bytes(session, settings, owner_id, incoming.size, "this upload")
            keep_blob(session, store, blob_source, blob_sha256)
        finally:
            # Moved into the store unless refused; never left in incoming/.
            blob_source.unlink(missing_ok=True)
        graph_blob_sha256 = _keep_graph(session, store, arch)
        checkpoint = Checkpoint(
            id=new_id("ckpt"),
            owner_id=owner_id,
            name=display_name(name, filename, f"checkpoint-{sha256[:12]}"),
            sha256=sha256,
            blob_sha256=blob_sha256,
            format=file_format,
            arch=arch.to_json(),
            num_params=arch.num_params(),
            size_bytes=incoming.size,
            key_map=applied or None,
            graph_blob_sha256=graph_blob_sha256,
            created_at=utcnow(),
        )
        return _insert_or_existing(session, checkpoint, arch), True


def _check_recordable(applied: Mapping[str, str]) -> None:
    """Refuse a renaming the database cannot keep: PostgreSQL's JSON holds no NUL character."""
    for name in applied:
        if "\x00" in name:
            raise KeyMapError(
                f"The file's tensor name {name!r} holds a NUL character, which the checkpoint's "
                "key_map cannot record; save the model under names without it."
            )


def _same_renaming(existing: Checkpoint, applied: dict[str, str]) -> Checkpoint:
    """``existing``, the checkpoint these bytes already are, if it renamed them as ``applied``
    does; KeyMapConflictError otherwise (one file of one arch is one checkpoint)."""
    if (existing.key_map or {}) != applied:
        raise KeyMapConflictError(
            f"This file is already checkpoint {existing.id} of this arch, stored under another "
            "renaming of its tensors (its key_map); delete that checkpoint to store the file "
            "under this key_map.",
            checkpoint_id=existing.id,
        )
    return existing


def _write_state(store: BlobStore, state: Mapping[str, torch.Tensor]) -> Path:
    """``state`` written as safetensors to a new temporary file of the store (the caller keeps
    or removes it)."""
    temporary = store.temporary_path(".safetensors")
    try:
        save_safetensors(state, temporary)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _insert_or_existing(session: Session, checkpoint: Checkpoint, arch: Architecture) -> Checkpoint:
    """Insert, or return the row a concurrent upload of the same bytes and arch inserted first."""
    session.add(checkpoint)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = _same_bytes_and_arch(session, checkpoint.owner_id, checkpoint.sha256, arch)
        session.commit()
        if existing is None:
            raise
        return existing
    return checkpoint


def store_artifact(
    session: Session,
    store: BlobStore,
    owner_id: str,
    arch: Architecture,
    state: Mapping[str, torch.Tensor],
    name: str,
    job_id: str,
) -> Checkpoint:
    """Keep a state dict a job produced as a checkpoint of the job's owner (not committed).

    Its ``sha256`` is that of the stored safetensors bytes; identical outputs of one arch share
    one row.
    """
    written = _write_state(store, validate_state_dict(arch, state))
    try:
        blob_sha256, size_bytes = keep_blob_file(session, store, written)
    finally:
        written.unlink(missing_ok=True)
    existing = _same_bytes_and_arch(session, owner_id, blob_sha256, arch)
    if existing is not None:
        return existing
    graph_blob_sha256 = _keep_graph(session, store, arch)
    checkpoint = Checkpoint(
        id=new_id("ckpt"),
        owner_id=owner_id,
        name=name[:MAX_NAME_LENGTH],
        sha256=blob_sha256,
        blob_sha256=blob_sha256,
        format="safetensors",
        arch=arch.to_json(),
        num_params=arch.num_params(),
        size_bytes=size_bytes,
        source_job_id=job_id,
        graph_blob_sha256=graph_blob_sha256,
        created_at=utcnow(),
    )
    session.add(checkpoint)
    session.flush()
    return checkpoint


def delete_checkpoint(session: Session, store: BlobStore, checkpoint: Checkpoint) -> None:
    """Delete a checkpoint unless a queued or running job uses it (409)."""
    # model_ids is a JSON list of ids, whose text holds each id in double quotes.
    in_model_ids = cast(Job.model_ids, Text).contains(f'"{checkpoint.id}"', autoescape=True)
    uses = (Job.model_a_id == checkpoint.id) | (Job.model_b_id == checkpoint.id) | in_model_ids
    refuse_if_used(session, checkpoint.owner_id, uses, f"Checkpoint {checkpoint.id}")
    delete_with_blob(
        session, store, checkpoint, Checkpoint.blob_sha256, Checkpoint.graph_blob_sha256
    )
