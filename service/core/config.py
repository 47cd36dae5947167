"""The one place that reads the environment: every setting is an ``LLFC_*`` variable.

The defaults describe the embedded mode (``llfc serve``): a SQLite file and a filesystem message
queue inside ``LLFC_DATA_DIR``, auth off, so a new user needs no server at all. The production
mode points ``LLFC_DATABASE_URL`` at PostgreSQL and ``LLFC_BROKER_URL`` at Redis, with auth on.
"""

from __future__ import annotations

import errno
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVELOPMENT_SECRET_KEY = "llfc-development-secret-key"
"""The default pepper; acceptable only with auth off, where no key is ever checked."""

MIN_SECRET_KEY_LENGTH = 16
MAX_MODELS_FIELD = 1000
"""A bound on a job body's ``models`` that holds whatever the settings say, so no body makes the
service look up an unbounded list; ``LLFC_MAX_JOB_MODELS`` (at most this) is the limit a
submission is held to."""


class Settings(BaseSettings):
    """Service and worker configuration, validated once at start."""

    model_config = SettingsConfigDict(env_prefix="LLFC_", extra="ignore")

    data_dir: Path = Field(
        default=Path("llfc-data"),
        description="Folder for blobs, the SQLite database and the embedded message queue.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default a SQLite file llfc.db inside the data folder.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL; default Celery's filesystem transport in the data folder.",
    )
    auth: bool = Field(default=False, description="Require 'Authorization: Bearer <api key>'.")
    secret_key: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_SECRET_KEY),
        description="Pepper mixed into API key hashes; keys stop working when it changes.",
    )
    max_upload_bytes: int = Field(default=512 * 1024**2, ge=1024)
    max_dataset_expansion: int = Field(
        default=64,
        ge=1,
        description="An uploaded .npz may declare at most this many times its own size once "
        "decompressed (a zip bomb is refused before anything is decompressed).",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    datasets_root: Path | None = Field(
        default=None,
        description="Folder holding local copies of mnist/ and cifar10/; default <data>/datasets.",
    )
    max_params: int = Field(default=200_000_000, ge=1, description="Largest accepted model.")
    inspect_proof_max_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        description=(
            "Largest estimated memory of the proof POST /v1/archs/inspect runs in the API process "
            "(random weights and 4 examples on the CPU); larger archs are proved by their jobs."
        ),
    )
    max_examples: int = Field(default=100_000, ge=1, description="Most examples a job may use.")
    max_alphas: int = Field(default=101, ge=2, description="Most alphas in one analyze job.")
    max_epochs: int = Field(default=500, ge=1, description="Most epochs in one train job.")
    max_modes: int = Field(default=8, ge=2, description="Most modes one train job may produce.")
    max_job_models: int = Field(
        default=16,
        ge=2,
        le=MAX_MODELS_FIELD,
        description="Most models one job on N models (a sweep, a merge) may take; a sweep analyses "
        "N (N - 1) / 2 pairs.",
    )
    worker_concurrency: int = Field(
        default=1, ge=1, description="Worker child processes; one per GPU is the known-good shape."
    )
    worker_gpus: str | None = Field(
        default=None,
        description="GPUs of this worker, comma-separated as CUDA_VISIBLE_DEVICES takes them "
        "('0,1,2,3'); default: the worker's CUDA_VISIBLE_DEVICES. With more than one, pool "
        "child i sees only GPU i modulo their number.",
    )
    worker_max_jobs_per_child: int = Field(
        default=100,
        ge=0,
        description="A worker child process is replaced by a fresh one after running this many "
        "jobs (0: never), returning the memory and GPU state a long-lived process accumulates.",
    )
    worker_stop_grace_seconds: float = Field(
        default=10.0,
        ge=0.0,
        description="How long a stopping 'llfc serve' lets the running job finish before "
        "stopping the worker cold (the job is queued again for the next start).",
    )
    retry_after_seconds: int = Field(default=2, ge=1, description="Polling hint for jobs.")
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Runs a job gets: one whose worker dies this many times ends failed.",
    )
    heartbeat_seconds: float = Field(
        default=10.0, gt=0.0, description="How often a running job writes its heartbeat."
    )
    lease_seconds: float = Field(
        default=60.0,
        gt=0.0,
        description="A running job whose heartbeat is older than this is taken as lost: "
        "queued again (or failed after LLFC_MAX_ATTEMPTS runs).",
    )
    maintenance_interval_seconds: float = Field(
        default=15.0,
        gt=0.0,
        description="How often each API process reaps lost jobs, republishes undelivered ones "
        "and removes abandoned partial uploads.",
    )
    republish_after_seconds: float = Field(
        default=300.0,
        gt=0.0,
        description="A job still queued this long after its last publish is published again.",
    )
    incoming_max_age_seconds: float = Field(
        default=3600.0,
        gt=0.0,
        description="A partial upload or artifact file untouched this long is deleted.",
    )
    broker_visibility_timeout_seconds: int = Field(
        default=3600,
        ge=1,
        description="Redis hands an unacknowledged message out again after this long; the "
        "job's claim and heartbeat make such a second delivery a no-op.",
    )
    broker_transport_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra Celery broker transport options as JSON, merged over ours.",
    )
    job_soft_time_limit_seconds: float = Field(
        default=12 * 3600.0,
        ge=0.0,
        description="A job running longer ends failed at its next step; 0: no soft limit.",
    )
    job_time_limit_seconds: float = Field(
        default=12 * 3600.0 + 600.0,
        gt=0.0,
        description="A job running longer is killed with its worker process and ends failed.",
    )
    max_queued_jobs_per_owner: int = Field(
        default=1000, ge=1, description="Queued jobs one owner may have; more get 429."
    )
    max_stored_bytes_per_owner: int = Field(
        default=100 * 1024**3,
        ge=1,
        description="Bytes of checkpoints and datasets one owner may keep; more get 507.",
    )
    max_running_jobs_per_owner: int = Field(
        default=4,
        ge=1,
        description="Jobs of one owner that run at once; the owner's next job waits, queued, "
        "while other owners' jobs run.",
    )
    max_job_memory_bytes: int = Field(
        default=16 * 1024**3,
        ge=1024**2,
        description="Peak memory a job may need, as the engine estimates it at submission "
        "(activations of one batch, width x width matching matrices, the models); more get "
        "422.",
    )
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes serving the HTTP API on one port ('llfc api' and 'llfc serve'); "
        "each uses at most one core.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics_token: SecretStr | None = Field(
        default=None,
        description="With auth on, GET /metrics needs 'Authorization: Bearer <this token>' "
        "(API keys do not open it); unset, /metrics answers 403 while auth is on.",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0.0,
        description="A connection whose request line and headers are not complete this long "
        "after they began is answered 408 and closed.",
    )
    body_idle_timeout_seconds: float = Field(
        default=30.0,
        gt=0.0,
        description="A connection sending no byte of its request body for this long (while the "
        "service is ready to read it) is closed.",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="Open connections one API process serves at once; requests past it get 503.",
    )
    wait_tick_seconds: float = Field(
        default=0.05,
        gt=0.0,
        le=5.0,
        description="How often each API process reads, in one query, the jobs its long polls "
        "and event streams wait on (none while nobody waits).",
    )
    events_max_seconds: float = Field(
        default=3600.0,
        gt=0.0,
        description="A job's event stream ends after this long; the client connects again.",
    )

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_metrics_token_is_unset(cls, token: Any) -> Any:
        # LLFC_METRICS_TOKEN= (set but empty) means no token, not a token nobody can send.
        return None if token == "" else token

    @model_validator(mode="after")
    def _refuse_default_secret_with_auth(self) -> Settings:
        # The SQLite file holds the key hashes too: with the public default pepper, a copy of
        # the data folder would confirm guessed keys offline.
        secret = self.secret_key.get_secret_value()
        weak = secret == DEVELOPMENT_SECRET_KEY or len(secret) < MIN_SECRET_KEY_LENGTH
        if self.auth and weak:
            raise ValueError(
                "LLFC_SECRET_KEY must be set to a private value of at least "
                f"{MIN_SECRET_KEY_LENGTH} characters when LLFC_AUTH is on; generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return self

    @model_validator(mode="after")
    def _check_lease_and_time_limits(self) -> Settings:
        if self.lease_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(
                f"LLFC_LEASE_SECONDS ({self.lease_seconds:g}) must be at least twice "
                f"LLFC_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}), or a live job whose "
                "heartbeat is a little late would be taken as lost."
            )
        soft = self.job_soft_time_limit_seconds
        if soft > 0 and soft >= self.job_time_limit_seconds:
            raise ValueError(
                f"LLFC_JOB_SOFT_TIME_LIMIT_SECONDS ({soft:g}) must be below "
                f"LLFC_JOB_TIME_LIMIT_SECONDS ({self.job_time_limit_seconds:g}), so a job is "
                "asked to stop before it is killed."
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'llfc.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        """Where the filesystem transport keeps its messages (embedded mode only)."""
        return (self.data_dir / "broker").resolve()

    def create_data_dir(self) -> Path:
        """The data folder, created readable by this user only (0700) if it does not exist: it
        holds the SQLite file with the key hashes, and every upload. An existing folder keeps
        the permissions its owner gave it."""
        folder = self.data_dir.resolve()
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(
                errno.ENOTDIR, "LLFC_DATA_DIR must name a folder, and this is a file", str(folder)
            )
        if not folder.is_dir():
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.mkdir(mode=0o700, exist_ok=True)
            folder.chmod(0o700)  # mkdir's mode is masked by the umask; this is exact.
        return folder

    @property
    def worker_gpu_ids(self) -> list[str]:
        """The worker's GPUs as ``LLFC_WORKER_GPUS`` names them, else as its own
        ``CUDA_VISIBLE_DEVICES`` does; empty when neither names any (all GPUs of the machine,
        or none). Read from the text only: asking CUDA would initialise it in the Celery main
        process, and every forked child would inherit a context it cannot use."""
        listed = self.worker_gpus
        if listed is None:
            listed = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]

    @property
    def blob_dir(self) -> Path:
        return (self.data_dir / "blobs").resolve()

    @property
    def metrics_dir(self) -> Path:
        """Where this host's API processes leave their request counters for each other
        (``service/shared_metrics.py``); per host, since hosts may share the data folder."""
        return (self.data_dir / "metrics" / socket.gethostname()).resolve()

    @property
    def resolved_datasets_root(self) -> Path:
        return (self.datasets_root or self.data_dir / "datasets").resolve()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
