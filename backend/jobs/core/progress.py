"""What a run tells whoever watches it: a product's chunks started, its bytes as they arrive,
its chunks done and the product finished, and a batch job's state while the service prepares it.

The engines and ingest call a `Progress`; the terminal display (cli/progress.py) implements it,
and `NullProgress` is the silent default for pipes, logs, --quiet and tests.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, product: str, chunks: int) -> None: ...
    def received(self, product: str, size: int) -> None: ...  # bytes of a chunk, as they arrive
    def advance(self, product: str, part_bytes: int) -> None: ...  # a chunk done: its bytes
    def finish(self, product: str) -> None: ...
    def waiting(self, label: str, state: str, percent: int | None) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    """For pipes, logs, --quiet and tests: the log lines say everything."""

    def start(self, product: str, chunks: int) -> None:
        pass

    def received(self, product: str, size: int) -> None:
        pass

    def advance(self, product: str, part_bytes: int) -> None:
        pass

    def finish(self, product: str) -> None:
        pass

    def waiting(self, label: str, state: str, percent: int | None) -> None:
        pass

    def close(self) -> None:
        pass


class OverallProgress:
    """A universe run: one bar for all its symbol-year-products, parts done of parts planned."""

    LABEL = "all"

    def __init__(self, inner: Progress, parts: int) -> None:
        self._inner = inner
        self._parts = parts
        self._started = False

    def start(self, product: str, chunks: int) -> None:  # noqa: ARG002  Progress
        if not self._started:
            self._started = True
            self._inner.start(self.LABEL, self._parts)

    def received(self, product: str, size: int) -> None:  # noqa: ARG002  Progress
        self._inner.received(self.LABEL, size)

    def advance(self, product: str, part_bytes: int) -> None:  # noqa: ARG002  Progress
        self._inner.advance(self.LABEL, part_bytes)

    def finish(self, product: str) -> None:
        pass

    def waiting(self, label: str, state: str, percent: int | None) -> None:
        self._inner.waiting(label, state, percent)

    def close(self) -> None:
        self._inner.close()
