"""The service's objects as small frozen dataclasses, built from the JSON of ``docs/API.md``.

Fields that API.md promises are required; the ones the service adds beyond it are optional, so
the client keeps working against any server that honours the contract. ``raw`` keeps the whole
JSON object for anything newer than this client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

# Re-exported: callers read a job's kind and status with its model.
from llfc_results.jobs import FINISHED_STATUSES as FINISHED_STATUSES
from llfc_results.jobs import JobKind as JobKind
from llfc_results.jobs import JobStatus as JobStatus

T = TypeVar("T")


def _timestamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class Checkpoint:
    """A stored model: its arch, the hash of the bytes as uploaded, and the job that made it."""

    id: str
    name: str
    sha256: str
    size_bytes: int
    format: str
    arch: dict[str, Any]
    num_params: int
    created_at: datetime | None
    source_job_id: str | None = None
    key_map: dict[str, str] | None = None
    """The renaming the upload's key_map applied, {name in the file: name stored}; None when
    the names were stored as uploaded."""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Checkpoint:
        return cls(
            id=body["id"],
            name=body["name"],
            sha256=body["sha256"],
            size_bytes=body["size_bytes"],
            format=body["format"],
            arch=body["arch"],
            num_params=body["num_params"],
            created_at=_timestamp(body.get("created_at")),
            source_job_id=body.get("source_job_id"),
            key_map=body.get("key_map"),
            raw=body,
        )


@dataclass(frozen=True)
class Dataset:
    """An uploaded dataset or a built-in (``builtin:<name>``, whose size depends on the split)."""

    id: str
    name: str
    num_examples: int | None
    input_shape: list[int]
    num_classes: int
    sha256: str | None
    builtin: bool = False
    description: str | None = None
    installed: bool = True
    """False for a built-in whose files are not on the service (jobs naming it are refused)."""
    kind: str = "labelled"
    """``labelled`` (examples with class labels) or ``tokens`` (token sequences, for language
    models; ``num_classes`` is then the vocabulary they need)."""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Dataset:
        return cls(
            id=body["id"],
            name=body["name"],
            num_examples=body.get("num_examples"),
            input_shape=list(body.get("input_shape") or []),
            num_classes=body["num_classes"],
            sha256=body.get("sha256"),
            builtin=bool(body.get("builtin", body["id"].startswith("builtin:"))),
            description=body.get("description"),
            installed=bool(body.get("installed", True)),
            kind=str(body.get("kind", "labelled")),
            raw=body,
        )


@dataclass(frozen=True)
class Progress:
    """How far a job is (0 to 1) and what it is doing."""

    fraction: float
    stage: str


@dataclass(frozen=True)
class JobProgress:
    """A job's status and progress as its event stream reports them while it runs."""

    id: str
    status: str
    progress: Progress

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JobProgress:
        progress = body.get("progress") or {}
        return cls(
            id=body["id"],
            status=body["status"],
            progress=Progress(
                fraction=float(progress.get("fraction", 0.0)), stage=progress.get("stage", "")
            ),
        )


@dataclass(frozen=True)
class Artifact:
    """Something a job produced: a new checkpoint, or bytes at a URL relative to the service."""

    name: str
    checkpoint_id: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class Job:
    """A submitted job as the service last reported it."""

    id: str
    kind: str
    status: str
    progress: Progress
    error: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    artifacts: list[Artifact]
    model_a: str | None = None
    model_b: str | None = None
    models: list[str] | None = None
    """The checkpoints of a job on N models (a sweep), in the order given."""
    dataset: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """Succeeded, failed or cancelled: the job will not change any more."""
        return self.status in FINISHED_STATUSES

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Job:
        progress = body.get("progress") or {}
        return cls(
            id=body["id"],
            kind=body["kind"],
            status=body["status"],
            progress=Progress(
                fraction=float(progress.get("fraction", 0.0)), stage=progress.get("stage", "")
            ),
            error=body.get("error"),
            created_at=_timestamp(body.get("created_at")),
            started_at=_timestamp(body.get("started_at")),
            finished_at=_timestamp(body.get("finished_at")),
            result=body.get("result"),
            artifacts=[
                Artifact(
                    name=item["name"],
                    checkpoint_id=item.get("checkpoint_id"),
                    url=item.get("url"),
                )
                for item in body.get("artifacts") or []
            ],
            model_a=body.get("model_a"),
            model_b=body.get("model_b"),
            models=body.get("models"),
            dataset=body.get("dataset"),
            params=body.get("params") or {},
            raw=body,
        )


@dataclass(frozen=True)
class LayerMetric:
    """One number of an analyze result: ``metric`` of ``pair`` at a layer and/or alpha."""

    pair: str
    metric: str
    layer: str | None
    layer_index: int | None
    alpha: float | None
    value: float | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> LayerMetric:
        return cls(
            pair=body["pair"],
            metric=body["metric"],
            layer=body.get("layer"),
            layer_index=body.get("layer_index"),
            alpha=body.get("alpha"),
            value=body.get("value"),
        )


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; pass ``next_cursor`` back for the next, None at the end."""

    items: list[T]
    next_cursor: str | None
