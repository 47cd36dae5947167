"""The one place that reads the environment: every setting is an ``LLFC_*`` variable.

The defaults describe the embedded mode (``llfc serve``): a SQLite file and a filesystem message
queue inside ``LLFC_DATA_DIR``, auth off, so a new user needs no server at all. The production
mode points ``LLFC_DATABASE_URL`` at PostgreSQL and ``LLFC_BROKER_URL`` at Redis, with auth on.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llfc_core.params import MATCH_METHODS, MERGE_METHODS
from llfc_results.jobs import JobKind

DEVELOPMENT_SECRET_KEY = "llfc-development-secret-key"
"""The default pepper; acceptable only with auth off, where no key is ever checked."""

MIN_SECRET_KEY_LENGTH = 16
MAX_MODELS_FIELD = 1000
"""A bound on a job body's ``models`` that holds whatever the settings say, so no body makes the
service look up an unbounded list; ``LLFC_MAX_JOB_MODELS`` (at most this) is the limit a
submission is held to."""


QUEUE_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"
"""A logical queue's name: short, lower case, safe as part of a Celery queue and a label."""
ROUTED_METHODS = (*MATCH_METHODS, *MERGE_METHODS)
"""What a routing rule's ``methods`` may name: a job's matching method (match, analyze, sweep)
or merging method (merge)."""


class QueueRoute(BaseModel):
    """One rule of ``LLFC_QUEUE_ROUTES``: a job goes to ``queue`` when every condition given
    holds (its kind is one of ``kinds``, its method one of ``methods``, its model has at least
    ``min_params`` parameters, the engine estimates its peak memory at ``min_memory_bytes`` or
    more). A rule without conditions matches every job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue: str = Field(pattern=QUEUE_NAME_PATTERN)
    kinds: tuple[JobKind, ...] | None = Field(default=None, min_length=1)
    methods: tuple[str, ...] | None = Field(default=None, min_length=1)
    min_params: int | None = Field(default=None, ge=1)
    min_memory_bytes: int | None = Field(default=None, ge=1)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: tuple[str, ...] | None) -> tuple[str, ...] | None:
        unknown = sorted(set(methods or ()) - set(ROUTED_METHODS))
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))} is not a method; a rule's methods are "
                f"{', '.join(ROUTED_METHODS)}"
            )
        return methods

    @property
    def is_fallback(self) -> bool:
        return (self.kinds, self.methods, self.min_params, self.min_memory_bytes) == (None,) * 4


GPU_QUEUE = "gpu"
"""The default rules' queue for jobs that need a GPU; a worker with LLFC_DEVICE=cpu that names
it in LLFC_WORKER_QUEUES is warned at start."""
DEFAULT_QUEUE_ROUTES = (
    QueueRoute(queue=GPU_QUEUE, kinds=(JobKind.TRAIN,)),
    QueueRoute(queue=GPU_QUEUE, methods=("ste",)),
    QueueRoute(queue=GPU_QUEUE, min_params=5_000_000),
    QueueRoute(queue="cpu"),
)
"""Training and STE matching (gradient descent) and models of 5M parameters or more need a
GPU; the rest (small models' matching, interpolation, analyses) runs well on CPUs."""


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
        description="A job still queued this long after its last publish is published again, "
        "once a live worker consumes its queue.",
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
    max_waits_per_key: int = Field(
        default=100,
        ge=1,
        description="Long polls and event streams one API key holds open in one API process; "
        "past it a long poll answers at once and an event stream gets 429.",
    )

    # --- Blob storage (README "Blob storage") ---------------------------------------------
    blob_url: str | None = Field(
        default=None,
        description="Where blobs are kept: file:///folder, or s3://bucket/prefix on any "
        "S3-compatible server (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
        "region from AWS_REGION); default the folder blobs/ inside the data folder.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="The S3 server's URL (MinIO, Ceph, R2, GCS interop); default AWS's.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Where a worker keeps copies of s3:// blobs; default <data>/cache.",
    )
    cache_max_bytes: int = Field(
        default=50 * 1024**3,
        ge=0,
        description="Bytes of blob copies a worker host keeps; the least recently used go first "
        "(the blobs the running job reads stay, even past the limit).",
    )

    @field_validator("blob_url", "s3_endpoint_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, url: Any) -> Any:
        return None if url == "" else url

    @field_validator("blob_url")
    @classmethod
    def _check_blob_url(cls, url: str | None) -> str | None:
        if url is not None:
            _parse_blob_url(url)
        return url

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_s3_endpoint_url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                "LLFC_S3_ENDPOINT_URL must be an http:// or https:// URL such as http://minio:9000."
            )
        if parsed.username or parsed.password:
            raise ValueError(
                "LLFC_S3_ENDPOINT_URL must not hold credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY instead."
            )
        return url

    # --- Queues by device --------------------------------------------------------------------
    queue_routes: tuple[QueueRoute, ...] = Field(
        default=DEFAULT_QUEUE_ROUTES,
        description="Which queue each job goes to, as JSON: an ordered list of rules "
        '{"queue", "kinds", "methods", "min_params", "min_memory_bytes"}; the first rule whose '
        "conditions all hold wins, and the last must have none (the fallback).",
    )
    worker_queues: str | None = Field(
        default=None,
        description="The queues an 'llfc worker' consumes, comma-separated ('gpu', 'cpu,gpu'); "
        "default every queue LLFC_QUEUE_ROUTES names. 'llfc serve' consumes them all.",
    )

    @field_validator("queue_routes")
    @classmethod
    def _routes_end_with_a_fallback(cls, routes: tuple[QueueRoute, ...]) -> tuple[QueueRoute, ...]:
        if not routes or not routes[-1].is_fallback:
            raise ValueError(
                "LLFC_QUEUE_ROUTES must end with a rule without conditions, such as "
                '{"queue": "cpu"}, so that every job has a queue.'
            )
        return routes

    @field_validator("worker_queues")
    @classmethod
    def _queue_names(cls, listed: str | None) -> str | None:
        if listed is None:
            return None
        names = [name.strip() for name in listed.split(",") if name.strip()]
        bad = [name for name in names if not re.fullmatch(QUEUE_NAME_PATTERN, name)]
        if not names or bad:
            raise ValueError(
                "LLFC_WORKER_QUEUES must list queue names separated by commas (lower-case "
                f"letters, digits, '-' and '_', at most 40 characters), got {listed!r}."
            )
        return ",".join(dict.fromkeys(names))

    @property
    def routed_queues(self) -> list[str]:
        """Every queue a rule of ``LLFC_QUEUE_ROUTES`` sends jobs to, in the rules' order."""
        return list(dict.fromkeys(route.queue for route in self.queue_routes))

    @property
    def consumed_queues(self) -> list[str]:
        """The queues this process's worker consumes (``LLFC_WORKER_QUEUES``, default all)."""
        if self.worker_queues is None:
            return self.routed_queues
        return self.worker_queues.split(",")

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
        """The folder of the blobs when they are kept in a folder (``LLFC_BLOB_URL`` unset or
        ``file://``)."""
        location = None if self.blob_url is None else _parse_blob_url(self.blob_url)
        if isinstance(location, Path):
            return location.resolve()
        return (self.data_dir / "blobs").resolve()

    @property
    def s3_location(self) -> S3Location | None:
        """The bucket and prefix of the blobs when ``LLFC_BLOB_URL`` is ``s3://``."""
        location = None if self.blob_url is None else _parse_blob_url(self.blob_url)
        return location if isinstance(location, S3Location) else None

    @property
    def staging_dir(self) -> Path:
        """Where uploads wait to be validated before they go to an S3 bucket."""
        return (self.data_dir / "incoming").resolve()

    @property
    def resolved_cache_dir(self) -> Path:
        return (self.cache_dir or self.data_dir / "cache").resolve()

    @property
    def metrics_dir(self) -> Path:
        """Where this host's API processes leave their request counters for each other
        (``service/shared_metrics.py``); per host, since hosts may share the data folder."""
        return (self.data_dir / "metrics" / socket.gethostname()).resolve()

    @property
    def resolved_datasets_root(self) -> Path:
        return (self.datasets_root or self.data_dir / "datasets").resolve()


@dataclass(frozen=True)
class S3Location:
    """Blobs under ``s3://<bucket>/<prefix>``: object keys ``<prefix>/blobs/<sha[:2]>/<sha>``."""

    bucket: str
    prefix: str

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name


_BUCKET_NAME = re.compile(r"\A[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]\Z")


def _parse_blob_url(url: str) -> Path | S3Location:
    """``LLFC_BLOB_URL`` as a folder or an S3 location; a ValueError saying what is wrong.

    The URL is never repeated in the error: one with credentials in it must not reach a log.
    """
    parsed = urlsplit(url)
    if parsed.username or parsed.password:
        raise ValueError(
            "LLFC_BLOB_URL must not hold credentials; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY instead."
        )
    if parsed.scheme == "file":
        if parsed.netloc or not parsed.path.startswith("/"):
            raise ValueError(
                "LLFC_BLOB_URL as file:// must name an absolute folder, such as "
                "file:///var/lib/llfc/blobs."
            )
        return Path(unquote(parsed.path))
    if parsed.scheme == "s3":
        if not _BUCKET_NAME.match(parsed.netloc):
            raise ValueError(
                "LLFC_BLOB_URL as s3:// must name a bucket (3 to 63 lowercase letters, digits, "
                "dots and hyphens), such as s3://llfc-blobs or s3://llfc-blobs/prefix."
            )
        if parsed.query or parsed.fragment:
            raise ValueError("LLFC_BLOB_URL as s3:// takes no query or fragment.")
        prefix = parsed.path.strip("/")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ValueError(
                "LLFC_BLOB_URL's prefix must be names separated by single slashes, without "
                "'.' or '..'."
            )
        return S3Location(parsed.netloc, prefix)
    raise ValueError(
        "LLFC_BLOB_URL must be file:///folder or s3://bucket/prefix (the scheme given is neither)."
    )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
