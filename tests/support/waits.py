"""A real ``llfc api`` with auth on and no worker, for the tests of waiting on jobs: the jobs are
rows the test writes and changes through its own database connection, as a worker on another
host would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from service.db.models import Job, Owner, utcnow
from service.db.session import make_engine, make_sessionmaker
from support.servers import create_key, free_port, run_llfc, service_env, start, wait_ready


@dataclass
class WaitService:
    base_url: str
    engine: Engine
    keys: dict[str, str]


@contextmanager
def wait_service(data_dir: Path, **settings: str) -> Iterator[WaitService]:
    """The API on a free port with keys for alice and bob, stopped on the way out."""
    env = service_env(data_dir, LLFC_AUTH="on", **settings)
    run_llfc("migrate", env=env)
    keys = {owner: create_key(owner, env) for owner in ("alice", "bob")}
    port = free_port()
    process = start(["api", "--port", str(port)], env, data_dir / "api.log")
    base_url = f"http://127.0.0.1:{port}"
    engine = make_engine(f"sqlite:///{data_dir / 'llfc.db'}")
    try:
        wait_ready(base_url, process)
        yield WaitService(base_url, engine, keys)
    finally:
        engine.dispose()
        process.stop()


def add_job(service: WaitService, job_id: str, owner: str, status: str) -> str:
    """A match job row of ``owner`` at stage 'step 1', a tenth done."""
    with make_sessionmaker(service.engine)() as session:
        owner_id = session.scalar(select(Owner.id).where(Owner.name == owner))
        job = Job(
            id=job_id,
            owner_id=owner_id,
            kind="match",
            queue="cpu",
            status=status,
            progress_stage="step 1",
            progress_fraction=0.1,
            params={},
            created_at=utcnow(),
        )
        session.add(job)
        session.commit()
        return job.id
