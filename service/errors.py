"""Errors of the service's domain (jobs, quotas, keys, stored things), without status codes.

Each carries a sentence a person can act on, and the numbers a client may act on in ``fields``
(added to the problem detail as they are). Which status and problem type each one becomes is
decided once, in ``service/api/problems.py``, as for the engine's errors.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: ``message`` is a complete sentence meant for the user."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class NotFoundError(ServiceError):
    """No such resource of the caller; another owner's looks the same, so ids leak nothing."""

    def __init__(self, resource: str, resource_id: str) -> None:
        super().__init__(f"No {resource} with id {resource_id!r} exists.")
        self.resource = resource
        self.resource_id = resource_id


class InUseError(ServiceError):
    """A stored thing that a queued or running job still needs cannot be deleted."""


class KeyMapConflictError(ServiceError):
    """The same bytes of the same arch are already a checkpoint, stored under another renaming."""


class AlreadyFinishedError(ServiceError):
    """A job that already succeeded or failed cannot be cancelled."""


class InvalidIdempotencyKeyError(ServiceError):
    """An Idempotency-Key of the wrong length."""


class IdempotencyKeyReusedError(ServiceError):
    """An Idempotency-Key sent again with a different request body."""


class TooManyQueuedJobsError(ServiceError):
    """The owner already has the most queued jobs allowed; worth retrying after
    ``retry_after_s``."""

    def __init__(self, message: str, *, retry_after_s: int, queued: int, limit: int) -> None:
        super().__init__(message, queued=queued, limit=limit)
        self.retry_after_s = retry_after_s


class StorageQuotaError(ServiceError):
    """Storing more would pass the owner's storage quota."""


class UnauthorizedError(ServiceError):
    """No API key, or one that is unknown or revoked."""


class ServiceBusyError(ServiceError):
    """Work the API does itself (an inspection's proof) is already running; retry shortly."""


class StorageError(ServiceError):
    """The blob store cannot be reached or refused a request (a missing bucket, no
    credentials), or holds bytes that do not match their name; the operators must act."""
