"""Queues by device, in this process on SQLite and the filesystem broker: every publish goes to the
job's own queue, a worker's claim refuses a job of a queue it does not consume and sends it on
to that queue (never back to itself), and the registry of workers says which queues have a live
consumer."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from support.stores import migrated_engine

from service.broker import celery_app
from service.core.config import Settings, get_settings
from service.db.models import Job, JobStatus, Worker, utcnow
from service.db.session import make_sessionmaker
from service.fleet import (
    WORKER_ROW_MAX_AGE,
    WorkerIdentity,
    beat_worker,
    prune_workers,
    queue_states,
    registered_workers,
    remove_worker,
    unserved_queues_sentence,
)
from service.lifecycle import WAITING_FOR_SLOT_STAGE, claim_job, queue_not_consumed, queued_job
from service.metrics import fleet_lines
from service.queue import publish_and_mark, publish_waiting_jobs, republish_unclaimed

TOKEN = "host:1"


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """LLFC_DATA_DIR for the service's own settings and broker (the embedded mode)."""
    for name in ("LLFC_DATABASE_URL", "LLFC_BROKER_URL", "LLFC_WORKER_QUEUES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLFC_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    celery_app.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
    celery_app.cache_clear()


@pytest.fixture()
def session(data_dir: Path) -> Iterator[Session]:
    url = Settings(data_dir=data_dir).resolved_database_url
    with migrated_engine(url, {"own_1": "lab"}) as engine, make_sessionmaker(engine)() as session:
        yield session


def _job(session: Session, job_id: str, queue: str, **values: object) -> str:
    kind = "train" if queue == "gpu" else "interpolate"
    session.add(queued_job(id=job_id, owner_id="own_1", kind=kind, queue=queue, params={}))
    session.commit()
    if values:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()
    return job_id


def _messages(data_dir: Path) -> list[tuple[str, str]]:
    """(Celery queue, job id) of every message waiting in the filesystem broker, oldest first."""
    found = []
    for path in sorted((data_dir / "broker" / "queue").glob("*.msg")):
        queue = path.name.partition(".")[2].removesuffix(".msg")
        payload = json.loads(path.read_bytes())
        args, _kwargs, _embed = json.loads(base64.b64decode(payload["body"]))
        found.append((queue, args[0]))
    return found


def _worker_settings(data_dir: Path, queues: str) -> Settings:
    return Settings(data_dir=data_dir, worker_queues=queues, heartbeat_seconds=5, lease_seconds=30)


def test_publishing_and_republishing_send_each_job_to_its_own_queue(
    session: Session, data_dir: Path
) -> None:
    gpu, cpu = _job(session, "job_gpu", "gpu"), _job(session, "job_cpu", "cpu")
    assert publish_and_mark(session, [gpu, cpu, "job_deleted"]) == 2
    assert _messages(data_dir) == [("llfc.gpu", gpu), ("llfc.cpu", cpu)]
    settings = Settings(data_dir=data_dir, republish_after_seconds=1)
    later = utcnow() + timedelta(seconds=2)
    beat_worker(session, _identity("both:1", "cpu", "gpu"), later, later)
    assert republish_unclaimed(session, settings, later) == 2
    assert _messages(data_dir)[2:] == [("llfc.gpu", gpu), ("llfc.cpu", cpu)]


def test_jobs_of_a_queue_without_a_live_worker_are_republished_once_one_registers(
    session: Session, data_dir: Path
) -> None:
    gpu, cpu = _job(session, "job_gpu", "gpu"), _job(session, "job_cpu", "cpu")
    settings = Settings(data_dir=data_dir, republish_after_seconds=1, lease_seconds=30)
    later = utcnow() + timedelta(seconds=2)
    beat_worker(session, _identity("cpu:1", "cpu"), later, later)
    beat_worker(session, _identity("gone:2", "gpu"), later, later - timedelta(seconds=31))
    assert republish_unclaimed(session, settings, later) == 1
    assert _messages(data_dir) == [("llfc.cpu", cpu)]
    beat_worker(session, _identity("gpu:3", "gpu"), later, later)
    assert republish_unclaimed(session, settings, later) == 1
    assert _messages(data_dir)[1:] == [("llfc.gpu", gpu)]


def test_a_job_waiting_for_its_owners_slot_is_woken_in_its_own_queue(
    session: Session, data_dir: Path
) -> None:
    ended = _job(session, "job_ended", "cpu", status=JobStatus.SUCCEEDED)
    waiting = _job(session, "job_waiting", "gpu", progress_stage=WAITING_FOR_SLOT_STAGE)
    assert publish_waiting_jobs(session, Settings(data_dir=data_dir), ended) == 1
    assert _messages(data_dir) == [("llfc.gpu", waiting)]


def test_a_cpu_worker_never_claims_a_gpu_job_and_says_where_it_belongs(
    session: Session, data_dir: Path
) -> None:
    gpu = _job(session, "job_gpu", "gpu")
    cpu_worker = _worker_settings(data_dir, "cpu")
    assert claim_job(session, gpu, TOKEN, cpu_worker) is None
    row = session.get(Job, gpu, populate_existing=True)
    assert row is not None
    # Refused for its queue, not for the owner's slots: the stage stays as it was.
    assert (row.status, row.attempts, row.progress_stage) == (JobStatus.QUEUED, 0, "queued")
    assert queue_not_consumed(session, gpu, cpu_worker) == "gpu"
    gpu_worker = _worker_settings(data_dir, "gpu")
    assert queue_not_consumed(session, gpu, gpu_worker) is None
    claimed = claim_job(session, gpu, TOKEN, gpu_worker)
    assert claimed is not None and claimed.attempts == 1
    # Taken now: nothing to send on.
    assert queue_not_consumed(session, gpu, cpu_worker) is None


def test_a_cpu_worker_does_not_take_back_a_lost_gpu_run(session: Session, data_dir: Path) -> None:
    lost = _job(session, "job_lost", "gpu")
    session.execute(
        update(Job)
        .where(Job.id == lost)
        .values(status=JobStatus.RUNNING, heartbeat_at=utcnow() - timedelta(hours=1), attempts=1)
    )
    session.commit()
    assert claim_job(session, lost, TOKEN, _worker_settings(data_dir, "cpu")) is None
    assert claim_job(session, lost, TOKEN, _worker_settings(data_dir, "cpu,gpu")) is not None


def test_the_worker_sends_a_refused_job_on_to_its_queue_once(
    session: Session, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.run_state import JobRun

    gpu = _job(session, "job_gpu", "gpu")
    cpu_worker = _worker_settings(data_dir, "cpu")
    run = JobRun(gpu, cpu_worker)
    assert run.claim() is None
    assert run.send_to_its_queue() == "gpu"
    # To a queue the CPU worker does not read: it cannot come back to it.
    assert _messages(data_dir) == [("llfc.gpu", gpu)]
    published_at = session.scalar(select(Job.published_at).where(Job.id == gpu))
    assert published_at is not None
    # A job of the worker's own queue that it could not claim is not sent anywhere.
    cpu = _job(session, "job_cpu", "cpu", status=JobStatus.CANCELLED)
    assert JobRun(cpu, cpu_worker).send_to_its_queue() is None
    assert len(_messages(data_dir)) == 1


def test_a_refused_job_whose_publish_fails_stays_queued_for_the_republisher(
    session: Session, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.queue
    from worker.run_state import JobRun

    gpu = _job(session, "job_gpu", "gpu")
    monkeypatch.setattr(service.queue, "publish_job", lambda job_id, queue: False)
    assert JobRun(gpu, _worker_settings(data_dir, "cpu")).send_to_its_queue() is None
    row = session.get(Job, gpu, populate_existing=True)
    assert row is not None and (row.status, row.published_at) == (JobStatus.QUEUED, None)


def _identity(name: str, *queues: str) -> WorkerIdentity:
    return WorkerIdentity(name, list(queues), "cpu", None)


def test_queues_count_live_consumers_and_name_those_without_one(
    session: Session, data_dir: Path
) -> None:
    settings = _worker_settings(data_dir, "cpu")
    now = utcnow()
    _job(session, "job_gpu", "gpu")
    _job(session, "job_old", "retired")
    beat_worker(session, _identity("a:1", "cpu"), now, now)
    beat_worker(session, _identity("b:2", "cpu", "gpu"), now, now - timedelta(seconds=31))
    workers = registered_workers(session)
    states = queue_states(session, settings, workers, now)
    assert {name: (state.consumers, state.queued) for name, state in states.items()} == {
        "cpu": (1, 0),
        "gpu": (0, 1),
        "retired": (0, 1),
    }
    sentence = unserved_queues_sentence(states, settings)
    assert sentence is not None
    assert "queues 'gpu' (1 job queued), 'retired' (1 job queued)" in sentence
    lines = fleet_lines(states, workers, now)
    assert 'llfc_queue_depth{queue="gpu"} 1' in lines
    assert 'llfc_workers{queue="cpu"} 1' in lines
    assert 'llfc_workers{queue="gpu"} 0' in lines
    assert 'llfc_worker_heartbeat_age_seconds{worker="a:1",queues="cpu"} 0.000' in lines
    assert 'llfc_worker_heartbeat_age_seconds{worker="b:2",queues="cpu,gpu"} 31.000' in lines
    # The silent worker beats again: every queue the rules name is served.
    beat_worker(session, _identity("b:2", "cpu", "gpu"), now, now)
    session.execute(update(Job).values(status=JobStatus.CANCELLED))
    session.commit()
    states = queue_states(session, settings, registered_workers(session), now)
    assert unserved_queues_sentence(states, settings) is None


def test_worker_rows_are_removed_on_a_clean_stop_and_pruned_after_a_day(
    session: Session,
) -> None:
    now = utcnow()
    beat_worker(session, _identity("a:1", "cpu"), now, now)
    beat_worker(session, _identity("b:2", "gpu"), now, now - WORKER_ROW_MAX_AGE)
    beat_worker(session, _identity("c:3", "gpu"), now, now - WORKER_ROW_MAX_AGE - timedelta(1))
    assert prune_workers(session, now) == 1
    remove_worker(session, "a:1")
    assert [worker.name for worker in registered_workers(session)] == ["b:2"]


def test_the_registration_thread_beats_and_deletes_its_row_on_stop(
    session: Session, data_dir: Path
) -> None:
    from worker.registry import WorkerRegistration

    settings = Settings(
        data_dir=data_dir, worker_queues="gpu", worker_gpus="0,1", heartbeat_seconds=0.05
    )
    registration = WorkerRegistration(settings)
    registration.start()
    try:
        beats = []
        for _ in range(200):
            row = session.scalar(select(Worker).execution_options(populate_existing=True))
            session.commit()
            if row is not None and row.last_heartbeat_at not in beats:
                beats.append(row.last_heartbeat_at)
            if len(beats) >= 3:
                break
            time.sleep(0.02)
        assert len(beats) >= 3
        assert row is not None
        assert (row.name, row.queues, row.device, row.gpus) == (
            registration.identity.name,
            ["gpu"],
            "auto",
            "0,1",
        )
    finally:
        registration.stop()
    assert registered_workers(session) == []
