"""Waiting for jobs to change without a query per waiter: one watcher per API process.

Long polls (``GET /v1/jobs/{id}?wait=S``) and event streams (``/v1/jobs/{id}/events``) wait on
jobs whose rows workers on other processes and hosts update; only the database knows when one
changed. The watcher keeps the ids waited on in this process and, while there is at least one,
reads all their states in ONE statement per tick (``read_states``), waking the subscriptions
whose job changed. Its cost is one small query per tick per process, whatever the number of
waiters, and nothing at all while nobody waits: the loop ends when the last subscription does
and starts again with the next.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import NamedTuple

from service.db.models import FINISHED_STATUSES

logger = logging.getLogger(__name__)


class JobState(NamedTuple):
    """What a waiter watches of a job row: its status and progress (a tuple: every tick makes
    one per waited job, and compares it to the last)."""

    status: str
    stage: str
    fraction: float

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def same_step(self, other: JobState | None) -> bool:
        """The same status and stage (a long poll answers when either changes, not the
        fraction)."""
        return other is not None and (self.status, self.stage) == (other.status, other.stage)


ReadStates = Callable[[Sequence[str]], Mapping[str, JobState]]
"""The states of the given job ids that exist, in one statement (blocking: run in a thread)."""


class Subscription:
    """One waiter on one job: ``state`` is the job's latest known state (None once the row is
    gone); :meth:`changed` waits until the watcher sees it differ from the last one seen."""

    def __init__(self, job_id: str, known: JobState) -> None:
        self.job_id = job_id
        self.state: JobState | None = known
        self._changed = asyncio.Event()

    def see(self, state: JobState | None) -> None:
        """The watcher read ``state`` (None: the row is gone); a difference wakes the waiter."""
        if state != self.state:
            self.state = state
            self._changed.set()

    async def changed(self, timeout: float) -> bool:
        """True as soon as the job's state changed since the last call (or since it was
        subscribed with its known state), False after ``timeout`` seconds without a change."""
        if timeout > 0:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        seen = self._changed.is_set()
        self._changed.clear()
        return seen


class JobWatcher:
    """The per-process watcher: subscriptions by job id, and the loop that reads their states
    every ``tick_seconds`` while any exists."""

    def __init__(self, read_states: ReadStates, tick_seconds: float) -> None:
        self._read_states = read_states
        self._tick_seconds = tick_seconds
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def waiting(self) -> int:
        """Subscriptions open now (in every job)."""
        return sum(len(subscriptions) for subscriptions in self._subscriptions.values())

    @asynccontextmanager
    async def subscribe(self, job_id: str, known: JobState) -> AsyncIterator[Subscription]:
        """Watch ``job_id``, whose state the caller last read as ``known``: a change between
        that read and the first tick is seen too. Leaving the block (also by cancellation,
        when the client went away) removes the subscription."""
        subscription = Subscription(job_id, known)
        self._subscriptions.setdefault(job_id, set()).add(subscription)
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._watch(), name="llfc-job-watcher")
        try:
            yield subscription
        finally:
            subscriptions = self._subscriptions.get(job_id)
            if subscriptions is not None:
                subscriptions.discard(subscription)
                if not subscriptions:
                    del self._subscriptions[job_id]

    async def _watch(self) -> None:
        while self._subscriptions:
            job_ids = list(self._subscriptions)
            try:
                states = await asyncio.to_thread(self._read_states, job_ids)
            except Exception:
                # A database hiccup: the waiters keep waiting (their own deadlines end them) and
                # the next tick tries again. Said once per outage, not twenty times a second.
                if not self._failing:
                    logger.exception(
                        "Reading the states of %d waited-on jobs failed; retrying every tick",
                        len(job_ids),
                    )
                self._failing = True
            else:
                if self._failing:
                    logger.warning("Reading the states of waited-on jobs works again")
                self._failing = False
                for job_id in job_ids:
                    for subscription in self._subscriptions.get(job_id, ()):
                        subscription.see(states.get(job_id))
            await asyncio.sleep(self._tick_seconds)

    async def stop(self) -> None:
        """End the loop (the app is stopping)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
