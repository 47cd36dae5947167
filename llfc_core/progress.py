"""Progress reporting and cooperative cancellation shared by every long-running engine call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llfc_core.errors import CancelledError

ProgressCallback = Callable[[float, str], None]
"""Called with (fraction in [0, 1], stage text)."""

StopCheck = Callable[[], bool]
"""Returns True when the caller wants the computation to stop at the next batch."""


def _no_progress(fraction: float, stage: str) -> None:
    return None


def _never_stop() -> bool:
    return False


@dataclass
class Reporter:
    """Maps the progress of one stage onto a sub-range of the overall [0, 1] fraction.

    A pipeline made of several stages gives each stage a ``span`` so the reported fraction
    only ever grows, and every report doubles as a cancellation point.
    """

    callback: ProgressCallback = _no_progress
    should_stop: StopCheck = _never_stop
    start: float = 0.0
    span: float = 1.0

    def report(self, stage_fraction: float, stage: str) -> None:
        """Report progress within this stage; raise :class:`CancelledError` if asked to stop."""
        if self.should_stop():
            raise CancelledError()
        clamped = min(max(stage_fraction, 0.0), 1.0)
        self.callback(self.start + self.span * clamped, stage)

    def check(self) -> None:
        """A cancellation point with no progress update."""
        if self.should_stop():
            raise CancelledError()

    def sub(self, start: float, span: float) -> Reporter:
        """A reporter for a sub-stage covering [start, start + span] of this stage."""
        return Reporter(
            callback=self.callback,
            should_stop=self.should_stop,
            start=self.start + self.span * start,
            span=self.span * span,
        )
