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

    def __init__(self, write: Callable[[str], None]):
        self.write = write

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        start = time.perf_counter()
        yield lambda n: None
        spent = time.perf_counter() - start
        rate = f" ({total / max(spent, 1e-9):.1f}/s)" if total else ""
        self.write(f"{description}: {total or ''} in {spent:.1f} s{rate}")

    def log(self, message: str) -> None:
        self.write(message)
