"""API keys: random tokens shown once, stored only as HMAC-SHA256(LLFC_SECRET_KEY, key).

A key carries 256 random bits, so one keyed hash is enough (no slow password hash needed): the
database alone, without the pepper, cannot confirm a guess.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.models import ApiKey, Owner, new_id, utcnow
from service.errors import UnauthorizedError

KEY_PREFIX = "llfc_"
LOCAL_OWNER_NAME = "local"
"""The single owner of everything when auth is off (the embedded default)."""


def hash_api_key(key: str, secret_key: str) -> str:
    return hmac.new(secret_key.encode(), key.encode(), hashlib.sha256).hexdigest()


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def get_or_create_owner(session: Session, name: str) -> Owner:
    """The owner called ``name``, created if new (safe against a concurrent creation)."""
    owner = session.scalar(select(Owner).where(Owner.name == name))
    if owner is not None:
        return owner
    try:
        with session.begin_nested():
            owner = Owner(id=new_id("own"), name=name, created_at=utcnow())
            session.add(owner)
    except IntegrityError:
        owner = session.scalar(select(Owner).where(Owner.name == name))
        assert owner is not None
    return owner


def create_api_key(session: Session, owner_name: str, secret_key: str) -> str:
    """Create a key for ``owner_name`` (creating the owner if new); returns the only copy of it."""
    owner = get_or_create_owner(session, owner_name)
    key = generate_api_key()
    session.add(
        ApiKey(
            id=new_id("key"),
            owner_id=owner.id,
            prefix=key[: len(KEY_PREFIX) + 6],
            key_hash=hash_api_key(key, secret_key),
            created_at=utcnow(),
        )
    )
    return key


def owner_for_key(session: Session, key: str, secret_key: str) -> Owner | None:
    """The owner holding ``key``, or None for an unknown or revoked key."""
    statement = (
        select(Owner)
        .join(ApiKey, ApiKey.owner_id == Owner.id)
        .where(ApiKey.key_hash == hash_api_key(key, secret_key), ApiKey.revoked_at.is_(None))
    )
    return session.scalar(statement)


def key_error(*, missing: bool) -> UnauthorizedError:
    """The error for a request without a key (``missing``) or with one that is unknown or
    revoked."""
    if missing:
        detail = (
            "This service needs an API key: send 'Authorization: Bearer <key>'; an operator "
            "creates keys with 'llfc keys create --owner NAME'."
        )
    else:
        detail = (
            "The API key is not valid: send 'Authorization: Bearer <key>' with a key that was "
            "created by 'llfc keys create' and not revoked."
        )
    return UnauthorizedError(detail)
