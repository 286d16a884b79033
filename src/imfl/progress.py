"""How the loop reports progress without knowing who listens: the CLI passes a rich implementation,
the Python API a silent one by default."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Protocol


class Reporter(Protocol):
    def phase(self, description: str, total: int | None) -> contextlib.AbstractContextManager[Callable[[int], None]]:
        """A unit of work; the context gives a function to call with how many items were just done."""

    def log(self, message: str) -> None: ...


class Silent:
    """The default reporter: says nothing."""

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        yield lambda n: None

    def log(self, message: str) -> None:
        pass


class Lines:
    """For logs: one line when each phase ends (items, seconds, items/s), no live bars. ``write`` takes a line."""

    # A rate is only given for several items over at least this long: a step that found its work done (a cache hit)
    # takes microseconds, and "86202.2/s" would say nothing about how fast the work goes.
    MIN_SECONDS_FOR_RATE = 0.5

    def __init__(self, write: Callable[[str], None]):
        self.write = write

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        start = time.perf_counter()
        yield lambda n: None
        spent = time.perf_counter() - start
        rate = f" ({total / spent:.1f}/s)" if total is not None and total > 1 and spent >= self.MIN_SECONDS_FOR_RATE else ""
        self.write(f"{description}: {total or ''} in {spent:.1f} s{rate}")

    def log(self, message: str) -> None:
        self.write(message)
