"""How the loop reports progress without knowing who listens: the CLI passes a rich implementation,
the Python API a silent one by default."""

from __future__ import annotations

import contextlib
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
