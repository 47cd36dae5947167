"""The schema exists only through Alembic, and the migrations match the models."""

from __future__ import annotations

import json
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.command import downgrade, upgrade
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from service.db.migrate import alembic_config, head_revision
from service.db.models import Base
from service.db.session import make_engine

TABLES = {"owners", "api_keys", "checkpoints", "datasets", "jobs", "job_artifacts", "layer_metrics"}


def test_sqlite_upgrade_matches_the_models_and_downgrade_removes_everything(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'migrations.db'}"
    config = alembic_config(url)
    upgrade(config, "head")
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert context.get_current_revision() == head_revision()
            assert compare_metadata(context, Base.metadata) == []
        downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(config, "head")
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def test_jobs_from_before_queues_get_the_queue_the_default_rules_give(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queues.db'}"
    config = alembic_config(url)
    upgrade(config, "0007")
    engine = make_engine(url)
    insert_job = text(
        "INSERT INTO jobs (id, owner_id, kind, status, progress_fraction, progress_stage, "
        "created_at, attempts, params, model_a_id, model_ids, cancel_requested, reserved_bytes) "
        "VALUES (:id, 'own_1', :kind, 'queued', 0, 'queued', CURRENT_TIMESTAMP, 0, :params, "
        ":model_a, :models, 0, 0)"
    )
    insert_checkpoint = text(
        "INSERT INTO checkpoints (id, owner_id, name, sha256, blob_sha256, format, arch, "
        "arch_key, num_params, size_bytes, created_at) VALUES (:id, 'own_1', 'm', :id, :id, "
        "'safetensors', '{}', :id, :num_params, 1, CURRENT_TIMESTAMP)"
    )
    jobs = {
        "job_train": ("train", {"epochs": 1}, None, None),
        "job_ste": ("match", {"method": "ste"}, "ckpt_small", None),
        "job_ste_sweep": ("sweep", {"match": "ste"}, None, '["ckpt_small", "ckpt_large"]'),
        "job_large": ("interpolate", {"alpha": 0.5}, "ckpt_large", None),
        "job_large_merge": ("merge", {"method": "weight_average"}, None, '["ckpt_large"]'),
        "job_small": ("match", {"method": "weight"}, "ckpt_small", None),
        "job_gone": ("analyze", {"match": "weight"}, "ckpt_deleted", None),
    }
    try:
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO owners VALUES ('own_1', 'lab', CURRENT_TIMESTAMP)")
            )
            for checkpoint_id, num_params in (("ckpt_small", 1000), ("ckpt_large", 5_000_000)):
                connection.execute(
                    insert_checkpoint, {"id": checkpoint_id, "num_params": num_params}
                )
            for job_id, (kind, params, model_a, models) in jobs.items():
                connection.execute(
                    insert_job,
                    {
                        "id": job_id,
                        "kind": kind,
                        "params": json.dumps(params),
                        "model_a": model_a,
                        "models": models,
                    },
                )
        upgrade(config, "head")
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT id, queue FROM jobs"))
            queues = {job_id: queue for job_id, queue in rows}
        assert queues == {
            "job_train": "gpu",
            "job_ste": "gpu",
            "job_ste_sweep": "gpu",
            "job_large": "gpu",
            "job_large_merge": "gpu",
            "job_small": "cpu",
            "job_gone": "cpu",
        }
        downgrade(config, "0007")
        assert "queue" not in {column["name"] for column in inspect(engine).get_columns("jobs")}
        assert "workers" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
