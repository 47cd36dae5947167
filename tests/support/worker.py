"""Jobs for ``run_job`` in this process (``tests/worker_runs``): a migrated SQLite data folder,
an owner with two checkpoints of a small MLP, and jobs submitted as the API would submit them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llfc_core.archs import parse_arch
from llfc_core.checkpoints import save_safetensors
from service.checkpoints import ingest_checkpoint
from service.core.config import Settings
from service.db.models import Job
from service.db.session import session_scope
from service.jobs import submit_job
from service.schemas import JobCreate
from service.storage import open_blob_store

ARCH = {"name": "mlp", "widths": [4, 3, 2]}


@dataclass
class WorkerData:
    settings: Settings
    owner_id: str
    model_a: str
    model_b: str

    def submit(self, kind: str, **params: Any) -> str:
        body = JobCreate.model_validate(
            {"kind": kind, "model_a": self.model_a, "model_b": self.model_b, "params": params}
        )
        with session_scope() as session:
            job, _created = submit_job(session, self.settings, self.owner_id, body, None)
            return job.id

    def job(self, job_id: str) -> Job:
        with session_scope() as session:
            job = session.get(Job, job_id)
            assert job is not None
            session.expunge(job)
            return job


def upload_model(settings: Settings, owner_id: str, seed: int, folder: Path) -> str:
    torch.manual_seed(seed)
    path = folder / f"model-{seed}.safetensors"
    save_safetensors(parse_arch(ARCH).build().state_dict(), path)
    store = open_blob_store(settings)
    payload = path.read_bytes()
    incoming = store.incoming(max_bytes=len(payload))
    incoming.write(payload)
    with session_scope() as session:
        checkpoint, _created = ingest_checkpoint(
            session, store, settings, owner_id, incoming, str(ARCH).replace("'", '"'), None, None
        )
        session.commit()
        return checkpoint.id
