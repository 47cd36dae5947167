"""Request dependencies as ``Annotated`` aliases, so handlers read like their signature."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.config import Settings, get_settings
from service.db.models import Owner
from service.db.session import get_engine, make_sessionmaker, session_scope
from service.schemas import RESOURCE_ID_PATTERN
from service.security import LOCAL_OWNER_NAME, get_or_create_owner, key_error, owner_for_key
from service.storage import BlobStore, open_blob_store

READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; handlers commit what they change.

    GET and HEAD requests get a read-only session: on SQLite its transactions do not take the
    write lock, so concurrent polls neither wait for each other nor for the worker's writes.
    """
    read_only = request.method in READ_ONLY_METHODS
    session = make_sessionmaker(get_engine(), read_only=read_only)()
    try:
        yield session
    finally:
        session.close()


def get_store(settings: Annotated[Settings, Depends(get_settings)]) -> BlobStore:
    return open_blob_store(settings)


PRINTABLE_TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
"""Text without control characters (a NUL byte would make PostgreSQL fail the query)."""

ResourceIdPath = Annotated[
    str,
    Path(
        pattern=RESOURCE_ID_PATTERN,
        description="An id this service issued, e.g. job_0f3c... (letters, digits, _ . : -).",
    ),
]


def filter_query(description: str) -> Any:
    """A text filter of a list route: printable, at most 200 characters."""
    return Query(description=description, max_length=200, pattern=PRINTABLE_TEXT_PATTERN)


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[BlobStore, Depends(get_store)]

# Declares the Bearer scheme in the OpenAPI document (so clients and /docs know how to send a
# key); the checks and their problem details are ours, hence no automatic error.
BEARER_SCHEME = HTTPBearer(
    scheme_name="ApiKey",
    description="An API key from 'llfc keys create', sent as 'Authorization: Bearer <key>'.",
    auto_error=False,
)


BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER_SCHEME)]


def get_current_owner(
    session: SessionDep, settings: SettingsDep, credentials: BearerCredentials
) -> Owner:
    """The owner of the request's Bearer key (401 for a missing, unknown or revoked key); with
    auth off, the single local owner."""
    if not settings.auth:
        return _local_owner(session)
    if credentials is None:
        raise key_error(missing=True)
    key = credentials.credentials.strip()
    owner = owner_for_key(session, key, settings.secret_key.get_secret_value()) if key else None
    # End the read transaction now: an upload may stream for minutes after this check.
    session.commit()
    if owner is None:
        raise key_error(missing=False)
    return owner


def _local_owner(session: Session) -> Owner:
    """The single owner of a service without auth, created by the first request that needs it.

    The creation runs in a writing session of its own, since the request's may be read-only.
    """
    by_name = select(Owner).where(Owner.name == LOCAL_OWNER_NAME)
    owner = session.scalar(by_name)
    session.commit()
    if owner is None:
        with session_scope() as writer:
            get_or_create_owner(writer, LOCAL_OWNER_NAME)
        owner = session.scalar(by_name)
        session.commit()
        assert owner is not None
    return owner


CurrentOwner = Annotated[Owner, Depends(get_current_owner)]
