"""The one place that reads the environment: every setting is an ``LLFC_*`` variable.

The defaults describe the embedded mode (``llfc serve``): a SQLite file and a filesystem message
queue inside ``LLFC_DATA_DIR``, auth off, so a new user needs no server at all. The production
mode points ``LLFC_DATABASE_URL`` at PostgreSQL and ``LLFC_BROKER_URL`` at Redis, with auth on.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVELOPMENT_SECRET_KEY = "llfc-development-secret-key"
"""The default pepper; acceptable only where the database is a local SQLite file."""

MIN_SECRET_KEY_LENGTH = 16


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
    device: Literal["auto", "cpu", "cuda"] = "auto"
    datasets_root: Path | None = Field(
        default=None,
        description="Folder holding local copies of mnist/ and cifar10/; default <data>/datasets.",
    )
    max_params: int = Field(default=200_000_000, ge=1, description="Largest accepted model.")
    max_examples: int = Field(default=100_000, ge=1, description="Most examples a job may use.")
    max_alphas: int = Field(default=101, ge=2, description="Most alphas in one analyze job.")
    max_epochs: int = Field(default=500, ge=1, description="Most epochs in one train job.")
    max_modes: int = Field(default=8, ge=2, description="Most modes one train job may produce.")
    worker_concurrency: int = Field(
        default=1, ge=1, description="Worker child processes; one per GPU is the known-good shape."
    )
    worker_stop_grace_seconds: float = Field(
        default=10.0,
        ge=0.0,
        description="How long a stopping 'llfc serve' lets the running job finish before "
        "stopping the worker cold (the job is queued again for the next start).",
    )
    retry_after_seconds: int = Field(default=2, ge=1, description="Polling hint for jobs.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _refuse_default_secret_outside_sqlite(self) -> Settings:
        secret = self.secret_key.get_secret_value()
        weak = secret == DEVELOPMENT_SECRET_KEY or len(secret) < MIN_SECRET_KEY_LENGTH
        if self.auth and not self.is_sqlite and weak:
            raise ValueError(
                "LLFC_SECRET_KEY must be set to a private value of at least "
                f"{MIN_SECRET_KEY_LENGTH} characters when LLFC_AUTH is on and the database is "
                "not SQLite; generate one with: python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'"
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

    @property
    def blob_dir(self) -> Path:
        return (self.data_dir / "blobs").resolve()

    @property
    def resolved_datasets_root(self) -> Path:
        return (self.datasets_root or self.data_dir / "datasets").resolve()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
