"""How many job waits (long polls and event streams) each API key holds open in this process.

A wait holds a connection for up to a minute (a long poll) or an hour (an event stream), and
every API process serves at most ``LLFC_MAX_CONNECTIONS``: without a share per key, one owner's
script opening streams in a loop would hold them all, and every other owner's requests would
get 503. Past ``LLFC_MAX_WAITS_PER_KEY`` a long poll is answered at once (the client polls at
``Retry-After``'s pace, as with a service without long polls) and an event stream is refused
with 429. The count lives in the process: the event loop is its only user, so it needs no lock.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


def waiter_identity(key: str | None) -> str:
    """Whose share a wait counts against: the key's digest (the key itself is not kept), or
    the one local owner's when the request sends none (auth off)."""
    if key is None:
        return ""
    return hashlib.sha256(key.strip().encode()).hexdigest()


class WaitSlots:
    """Open waits by key, at most ``max_per_key`` each."""

    def __init__(self, max_per_key: int) -> None:
        self.max_per_key = max_per_key
        self._open: Counter[str] = Counter()

    def full(self, identity: str) -> bool:
        """Whether the key holds its whole share of waits already."""
        return self._open[identity] >= self.max_per_key

    @contextmanager
    def hold(self, identity: str) -> Iterator[None]:
        """Count one wait of the key while the block runs (also when it is cancelled)."""
        self._open[identity] += 1
        try:
            yield
        finally:
            self._open[identity] -= 1
            if not self._open[identity]:
                del self._open[identity]
