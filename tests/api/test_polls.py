"""The poll (``service/polls.py``): one statement per answer, the same job as the list shows,
401 and 404 told apart, and nothing cached."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, update
from support.stores import count_statements, migrated_engine

from service.api.problems import user_error_response
from service.core.config import Settings
from service.db.models import ApiKey, Job, JobArtifact, utcnow
from service.db.session import make_sessionmaker
from service.errors import NotFoundError, UnauthorizedError
from service.jobs import jobs_public
from service.polls import read_polled_job
from service.security import LOCAL_OWNER_NAME, create_api_key, get_or_create_owner

SECRET = "a-test-secret-of-more-than-thirty-two-characters"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with migrated_engine(f"sqlite:///{tmp_path / 'llfc.db'}", {}) as engine:
        yield engine


def _settings(tmp_path: Path, *, auth: bool) -> Settings:
    return Settings(data_dir=tmp_path, auth=auth, secret_key=SECRET)


def _add_job(engine: Engine, owner_name: str, artifacts: list[str]) -> str:
    with make_sessionmaker(engine)() as session:
        owner = get_or_create_owner(session, owner_name)
        job = Job(
            id=f"job_{owner_name}",
            owner_id=owner.id,
            kind="match",
            queue="cpu",
            status="succeeded",
            params={"method": "weight"},
            result={"loss_barrier": 0.25},
            created_at=utcnow(),
        )
        session.add(job)
        session.flush()
        for name in artifacts:
            session.add(JobArtifact(job_id=job.id, name=name, checkpoint_id=f"ckpt_{name}"))
        session.commit()
        return job.id


def _key(engine: Engine, owner_name: str) -> str:
    with make_sessionmaker(engine)() as session:
        key = create_api_key(session, owner_name, SECRET)
        session.commit()
        return key


def test_a_poll_is_one_statement_and_shows_the_job_as_the_list_does(
    engine: Engine, tmp_path: Path
) -> None:
    job_id = _add_job(engine, "alice", ["permuted_b", "interpolated"])
    key = _key(engine, "alice")
    statements = count_statements(engine)

    public, finished = read_polled_job(engine, _settings(tmp_path, auth=True), job_id, key)

    assert len(statements) == 1
    assert finished
    with make_sessionmaker(engine)() as session:
        (listed,) = jobs_public(session, [session.get(Job, job_id)])
    assert public == listed
    assert public.queue == "cpu"
    assert [artifact.name for artifact in public.artifacts] == ["permuted_b", "interpolated"]


def test_a_job_without_artifacts_reads_with_an_empty_list(engine: Engine, tmp_path: Path) -> None:
    job_id = _add_job(engine, "alice", [])
    public, _ = read_polled_job(
        engine, _settings(tmp_path, auth=True), job_id, _key(engine, "alice")
    )
    assert public.artifacts == []
    assert public.result == {"loss_barrier": 0.25}


def _refusal(engine: Engine, settings: Settings, job_id: str, key: str | None) -> int:
    """The status of the problem a poll raises."""
    with pytest.raises((UnauthorizedError, NotFoundError)) as raised:
        read_polled_job(engine, settings, job_id, key)
    return user_error_response(raised.value).status_code


@pytest.mark.parametrize("key", [None, "", "   ", "llfc_not-a-key"])
def test_a_missing_or_unknown_key_is_401(engine: Engine, tmp_path: Path, key: str | None) -> None:
    job_id = _add_job(engine, "alice", [])
    assert _refusal(engine, _settings(tmp_path, auth=True), job_id, key) == 401


def test_a_revoked_key_is_401(engine: Engine, tmp_path: Path) -> None:
    job_id = _add_job(engine, "alice", [])
    key = _key(engine, "alice")
    with make_sessionmaker(engine)() as session:
        session.execute(update(ApiKey).values(revoked_at=utcnow()))
        session.commit()
    assert _refusal(engine, _settings(tmp_path, auth=True), job_id, key) == 401


def test_another_owners_job_and_an_unknown_job_are_404(engine: Engine, tmp_path: Path) -> None:
    alices_job = _add_job(engine, "alice", [])
    bobs_key = _key(engine, "bob")
    settings = _settings(tmp_path, auth=True)
    for job_id in (alices_job, "job_unknown"):
        assert _refusal(engine, settings, job_id, bobs_key) == 404


def test_with_auth_off_the_local_owners_job_reads_without_a_key(
    engine: Engine, tmp_path: Path
) -> None:
    local_job = _add_job(engine, LOCAL_OWNER_NAME, ["permuted_b"])
    other_job = _add_job(engine, "alice", [])
    settings = _settings(tmp_path, auth=False)
    public, _ = read_polled_job(engine, settings, local_job, None)
    assert public.id == local_job
    assert _refusal(engine, settings, other_job, None) == 404


def test_every_poll_reads_the_current_status(engine: Engine, tmp_path: Path) -> None:
    job_id = _add_job(engine, "alice", [])
    key = _key(engine, "alice")
    settings = _settings(tmp_path, auth=True)
    with make_sessionmaker(engine)() as session:
        session.execute(update(Job).values(status="running", progress_fraction=0.4))
        session.commit()
    running, finished = read_polled_job(engine, settings, job_id, key)
    assert (running.status, running.progress.fraction, finished) == ("running", 0.4, False)
    with make_sessionmaker(engine)() as session:
        session.execute(update(Job).values(status="failed", error="out of memory"))
        session.commit()
    failed, finished = read_polled_job(engine, settings, job_id, key)
    assert (failed.status, failed.error, finished) == ("failed", "out of memory", True)
