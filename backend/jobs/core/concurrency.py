"""Concurrent calls on daemon threads, so an ending run never waits for a blocked network read."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def run_concurrently(
    calls: Sequence[Callable[[], T]], name: str, limit: int | None = None
) -> list[T]:
    """Run `calls` (at most `limit` at a time); their results in order, or the first failure.

    The threads are daemons: when the caller is interrupted (a signal) it stops waiting at once,
    and a call still blocked in a read (bounded by --timeout) cannot hold the process open.
    """
    results: list[T | None] = [None] * len(calls)
    failures: list[BaseException | None] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except BaseException as exc:  # noqa: BLE001  re-raised in the caller below
            failures[index] = exc

    wave = limit or len(calls) or 1
    for first in range(0, len(calls), wave):
        threads = [
            threading.Thread(target=run, args=(index,), name=f"{name}-{index}", daemon=True)
            for index in range(first, min(first + wave, len(calls)))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for failure in failures:
            if failure is not None:
                raise failure
    return results  # type: ignore[return-value]
