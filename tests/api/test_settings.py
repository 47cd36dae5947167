"""Settings: defaults of the embedded mode, and the refusal of a default secret in production."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from support.servers import llfc, service_env

from service.core.config import DEVELOPMENT_SECRET_KEY, Settings

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(autouse=True)
def no_llfc_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LLFC_"):
            monkeypatch.delenv(name)


def test_embedded_defaults_put_database_and_broker_in_the_data_folder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'llfc.db'}"
    assert settings.is_sqlite
    assert settings.uses_filesystem_broker
    assert settings.broker_folder == tmp_path.resolve() / "broker"
    assert settings.blob_dir == tmp_path.resolve() / "blobs"
    assert settings.resolved_datasets_root == tmp_path.resolve() / "datasets"
    assert settings.auth is False


def test_auth_reads_on_and_off_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLFC_AUTH", "on")
    monkeypatch.setenv("LLFC_SECRET_KEY", "s" * 32)
    assert Settings().auth is True
    monkeypatch.setenv("LLFC_AUTH", "off")
    assert Settings().auth is False


def test_default_secret_is_refused_with_auth_on_whatever_the_database(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="LLFC_SECRET_KEY must be set"):
        Settings(auth=True, database_url=POSTGRES_URL)
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(auth=True, database_url=POSTGRES_URL, secret_key="short")
    # The SQLite file holds the key hashes as well: the default pepper is refused there too.
    with pytest.raises(ValidationError, match="LLFC_SECRET_KEY must be set"):
        Settings(auth=True, data_dir=tmp_path)


def test_default_secret_is_accepted_only_with_auth_off(tmp_path: Path) -> None:
    assert Settings(auth=False, data_dir=tmp_path).secret_key.get_secret_value() == (
        DEVELOPMENT_SECRET_KEY
    )
    assert not Settings(auth=False, database_url=POSTGRES_URL).auth
    strong = "x" * 32
    settings = Settings(auth=True, database_url=POSTGRES_URL, secret_key=strong)
    assert settings.secret_key.get_secret_value() == strong


def test_device_must_be_auto_cpu_or_cuda() -> None:
    with pytest.raises(ValidationError):
        Settings(device="tpu")


def test_the_job_models_limit_may_not_pass_what_a_job_body_may_list(tmp_path: Path) -> None:
    # A body's 'models' holds at most 1000 ids whatever the settings say: a larger limit would
    # be refused by that bound with a sentence naming 1000, not the setting.
    assert Settings(data_dir=tmp_path, max_job_models=1000).max_job_models == 1000
    with pytest.raises(ValidationError, match="max_job_models"):
        Settings(data_dir=tmp_path, max_job_models=1001)


def test_an_empty_metrics_token_is_no_token() -> None:
    assert Settings(metrics_token="").metrics_token is None
    token = Settings(metrics_token="scrape-0123456789").metrics_token
    assert token is not None and token.get_secret_value() == "scrape-0123456789"


def test_a_new_data_folder_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    created = Settings(data_dir=data_dir).create_data_dir()
    assert created == data_dir.resolve()
    assert data_dir.stat().st_mode & 0o777 == 0o700


def test_llfc_migrate_creates_a_fresh_data_folder_for_its_user_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    migrated = llfc("migrate", env=service_env(data_dir))
    assert migrated.returncode == 0, migrated.stderr
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert (data_dir / "llfc.db").is_file()
