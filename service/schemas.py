"""Request and response bodies, named by role (``XCreate``, ``XPublic``, ``XsPublic``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from service.core.config import MAX_MODELS_FIELD
from service.db.models import JobKind, JobStatus
from service.json_input import MAX_JSON_DEPTH, JsonInputError, check_depth

RESOURCE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"
"""Every id this service issues (``ckpt_<hex>``, ``builtin:digits``...) matches; a reference that
does not is refused before it reaches the database (PostgreSQL cannot even compare text holding
a NUL byte)."""
ResourceId = Annotated[str, StringConstraints(pattern=RESOURCE_ID_PATTERN)]


class CheckpointPublic(BaseModel):
    id: str
    name: str
    sha256: str = Field(description="sha256 of the bytes as uploaded.")
    size_bytes: int = Field(description="Size of the bytes as uploaded.")
    format: Literal["safetensors", "torch", "onnx"] = Field(description="Format of the upload.")
    arch: dict[str, Any]
    num_params: int
    created_at: datetime
    source_job_id: str | None = Field(
        default=None, description="The job that produced this checkpoint, for artifacts."
    )
    key_map: dict[str, str] | None = Field(
        default=None,
        description="The renaming the upload's key_map applied, {name in the file: name "
        "stored (the arch's)}; null when the file's names were stored as they are.",
    )


class CheckpointsPublic(BaseModel):
    items: list[CheckpointPublic]
    next_cursor: str | None


class DatasetPublic(BaseModel):
    id: str = Field(description="An upload's id, or 'builtin:<name>'.")
    name: str
    num_examples: int | None = Field(description="Null for built-ins (it depends on the split).")
    input_shape: list[int]
    num_classes: int = Field(
        description="Largest label + 1; for token sequences, largest token id + 1 (the "
        "vocabulary they need)."
    )
    kind: Literal["labelled", "tokens"] = Field(
        default="labelled",
        description="labelled: examples x with class labels y; tokens: token sequences x "
        "(N x T integer ids) for language models, scored on next-token prediction.",
    )
    sha256: str | None = Field(description="sha256 of the uploaded bytes; null for built-ins.")
    builtin: bool = False
    format: str | None = None
    size_bytes: int | None = None
    stored_bytes: int | None = Field(
        default=None,
        description="Bytes of the normalised copy the owner's storage quota is charged for.",
    )
    created_at: datetime | None = None
    description: str | None = None
    installed: bool = Field(
        default=True,
        description="False for a built-in whose files are not on this service; jobs naming it "
        "are refused.",
    )


class DatasetsPublic(BaseModel):
    items: list[DatasetPublic]
    next_cursor: str | None


class JobCreate(BaseModel):
    """A job submission; which fields and params each kind takes is in ``service/jobs.py``."""

    model_config = ConfigDict(extra="forbid")

    kind: JobKind
    model_a: str | None = Field(
        default=None, description="Checkpoint id of model A.", pattern=RESOURCE_ID_PATTERN
    )
    model_b: str | None = Field(
        default=None, description="Checkpoint id of model B.", pattern=RESOURCE_ID_PATTERN
    )
    models: list[ResourceId] | None = Field(
        default=None,
        description="Checkpoint ids of a job on N models (a sweep or a merge), 2 to "
        "LLFC_MAX_JOB_MODELS of them, each once.",
        max_length=MAX_MODELS_FIELD,
    )
    dataset: str | None = Field(
        default=None,
        description="An uploaded dataset id or 'builtin:<name>'.",
        pattern=RESOURCE_ID_PATTERN,
    )
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _params_within_json_depth(cls, params: dict[str, Any]) -> dict[str, Any]:
        # A body read over HTTP is bounded by the JSON parser already; this bounds one built in
        # Python, which would otherwise reach json.dumps in the idempotency hash at any depth.
        try:
            check_depth(params, MAX_JSON_DEPTH - 1)
        except JsonInputError as error:
            raise PydanticCustomError("json_too_deep", f"it {error}") from error
        return params


class Progress(BaseModel):
    fraction: float
    stage: str


class ArtifactPublic(BaseModel):
    name: str
    checkpoint_id: str | None = None
    url: str | None = None


class JobPublic(BaseModel):
    id: str
    kind: JobKind
    queue: str = Field(
        description="The queue the routing rules (LLFC_QUEUE_ROUTES) gave the job at "
        "submission, such as 'gpu' or 'cpu': only workers consuming it run the job."
    )
    status: JobStatus
    progress: Progress
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    artifacts: list[ArtifactPublic]
    model_a: str | None
    model_b: str | None
    models: list[str] | None = Field(
        description="The models of a job on N models (a sweep or a merge), in order; null "
        "for other jobs."
    )
    dataset: str | None
    params: dict[str, Any] = Field(description="The params as validated, defaults filled in.")
    attempts: int
    cancel_requested: bool


class JobsPublic(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None


class LayerMetricPublic(BaseModel):
    pair: str
    metric: str
    layer: str | None
    layer_index: int | None
    alpha: float | None
    value: float | None


class LayerMetricsPublic(BaseModel):
    items: list[LayerMetricPublic]


class SweepMetricsPublic(BaseModel):
    loss_barrier: float | None
    error_barrier: float | None
    llfc_distance: float | None = Field(
        description="Mean over layers of E[1 - cos_alpha] at alpha 0.5."
    )


class SweepPairPublic(BaseModel):
    index_a: int = Field(description="Position of model A in the job's models.")
    index_b: int = Field(description="Position of model B in the job's models (> index_a).")
    model_a: str
    model_b: str
    naive: SweepMetricsPublic
    matched: SweepMetricsPublic | None = Field(
        description="Null when the sweep did not match (params.match 'none')."
    )


class SweepPairsPublic(BaseModel):
    items: list[SweepPairPublic]
    next_cursor: str | None


class ServiceConfigPublic(BaseModel):
    auth: bool = Field(description="Whether /v1 requests need 'Authorization: Bearer <api key>'.")


class ArchInspect(BaseModel):
    """``{"arch": {...}, "prove": bool}``, or the arch object itself (proved)."""

    model_config = ConfigDict(extra="allow")

    arch: dict[str, Any] | None = Field(
        default=None,
        description='The arch JSON, as for an upload: {"name": "torchvision", "model": ...}.',
    )
    prove: bool = Field(default=True, description="Run the proof (random weights and inputs).")

    def arch_json(self) -> dict[str, Any]:
        """The arch object, from ``arch`` or, without it, the whole body."""
        extra = dict(self.model_extra or {})
        if self.arch is None:
            return extra
        if extra:
            raise PydanticCustomError(
                "unknown_fields",
                "the body takes only 'arch' and 'prove', or is the arch object itself",
            )
        return self.arch


class TensorAxis(BaseModel):
    tensor: str
    axis: int
    offset: int | None = Field(default=None, description="First entry, on a composite axis.")
    block: int | None = Field(default=None, description="Entries per unit, on a composite axis.")


class PermutationGroup(BaseModel):
    name: str = Field(description="Named after the first layer whose outputs it reorders.")
    size: int
    observed_at: list[str] = Field(description="Feature layers activation matching reads.")
    axes: list[TensorAxis]
    heads: int | None = Field(
        default=None, description="A nested (attention) permutation's number of heads."
    )
    head_size: int | None = Field(default=None, description="Entries per head.")
    head_order: str | None = Field(
        default=None, description="The head order it shares with its attention's other one."
    )


class UnpermutedAxisPublic(BaseModel):
    tensor: str
    axis: int
    reason: str = Field(description="The op or rule that keeps these units in place.")


class FeatureLayerPublic(BaseModel):
    name: str
    kind: Literal["activation", "residual", "logits"]


class ProofPublic(BaseModel):
    relative_change: float | None = Field(
        default=None, description="max |f(permuted) - f| / max |f| under random permutations."
    )
    tolerance: float
    passed: bool | None = Field(default=None, description="None when the proof was not run.")
    examples: int | None = None
    inputs: str | None = None
    skipped: str | None = Field(default=None, description="Why the proof was not run here.")


class ArchReport(BaseModel):
    arch: dict[str, Any]
    num_params: int
    input_shape: list[int]
    num_classes: int
    has_batch_norm: bool
    permutations: list[PermutationGroup]
    unpermuted: list[UnpermutedAxisPublic]
    feature_layers: list[FeatureLayerPublic]
    condition_ii_layers: list[str]
    proof: ProofPublic
