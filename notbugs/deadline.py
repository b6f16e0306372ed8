"""When a job has to stop: a time limit and a stop request (SIGTERM), checked at safe points.

Shared GPU clusters cap job length, and `timeout` or the scheduler send SIGTERM before they kill.
A job that runs out of time finishes the batch it is on, saves what that batch completed (a
mid-epoch training checkpoint, the finished batches of a construction shard, the models a
re-evaluation has scored) and raises `Stopped`; the command line then exits with `EXIT_STOPPED`,
and the same command run again continues from there.

The check comes after a batch of work, never before the first one, so that every job makes
progress however short its time: consecutive jobs always finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

EXIT_STOPPED = 75  # EX_TEMPFAIL (sysexits.h): not finished, nothing lost, run the same command again
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C: not finished, resumable from the last checkpoint


class Stopped(Exception):
    """The job stopped early at a safe point; what it computed is saved and a rerun continues it."""


@dataclass
class Deadline:
    """`limit_s` seconds after creation (None: no limit), or as soon as `stop()` is called."""
    limit_s: float | None = None
    clock: Callable[[], float] = time.monotonic  # tests pass a counting clock
    reason: str = ""
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def stop(self, reason: str) -> None:
        """Ask the job to stop at its next safe point (e.g. from a signal handler)."""
        self.reason = self.reason or reason

    def expired(self) -> bool:
        if not self.reason and self.limit_s is not None and self.clock() - self.started >= self.limit_s:
            self.reason = f"time limit of {self.limit_s:g} s reached"
        return bool(self.reason)


def expired(deadline: Deadline | None) -> bool:
    return deadline is not None and deadline.expired()
