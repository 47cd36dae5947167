"""What the client raises: a server's problem detail, an unreachable server, a wait that ran out.

Every error a caller can act on is an :class:`LLFCClientError`, and its ``str`` is one sentence,
so a script (or the ``llfc`` CLI) can print it as it is.
"""

from __future__ import annotations

from typing import Any


class LLFCClientError(Exception):
    """Base of the client's errors; ``str(error)`` is a sentence a person can act on."""


class InvalidIdError(LLFCClientError, ValueError):
    """An id that cannot name any resource (empty), refused before a request is sent."""


class ApiError(LLFCClientError):
    """The service answered with an error: the RFC 9457 problem detail it sent.

    ``extra`` holds the problem's other members, e.g. ``missing``/``unexpected``/``mis_shaped``
    for a checkpoint that does not fit its arch, or ``errors`` for a validation failure.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        type: str = "about:blank",
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{detail} (HTTP {status} {title})")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.extra = extra or {}


class ConnectionFailed(LLFCClientError):
    """No answer from the service at ``url``: not running, wrong address, or a network timeout."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"Could not reach the LLFC service at {url} ({reason}); start one with 'llfc serve' "
            "or point LLFC_URL / --url at a running one."
        )
        self.url = url
        self.reason = reason


class JobTimeout(LLFCClientError):
    """:meth:`llfc_client.Client.wait` gave up before the job finished; the job keeps running."""

    def __init__(self, job_id: str, timeout: float, status: str, stage: str) -> None:
        super().__init__(
            f"Job {job_id} did not finish within {timeout:g} s (it is {status}: {stage}); "
            "it keeps running, wait for it again or cancel it."
        )
        self.job_id = job_id
        self.timeout = timeout
        self.status = status
        self.stage = stage
