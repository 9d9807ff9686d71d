"""Concurrent calls on daemon threads, so an ending run never waits for a blocked network read."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def run_concurrently(
    calls: Sequence[Callable[[], T]], name: str, limit: int | None = None
) -> list[T]:
    """Run `calls`, at most `limit` at a time; their results in order, or the first failure.

    A bounded pool: each worker takes the next call as soon as its own ends, so one slow call
    holds up no other. After a failure no call starts; those running are let finish (each is
    bounded by --timeout), then the failure is raised.

    The workers are daemons: when the caller is interrupted (a signal) it stops waiting at once,
    and a call still blocked in a read cannot hold the process open. (concurrent.futures joins
    its threads at exit, which is why it is not used here.)
    """
    results: list[T | None] = [None] * len(calls)
    failures: list[BaseException] = []
    pending = iter(range(len(calls)))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                index = None if failures else next(pending, None)
            if index is None:
                return
            try:
                results[index] = calls[index]()
            except BaseException as exc:  # noqa: BLE001  re-raised in the caller below
                with lock:
                    failures.append(exc)

    workers = [
        threading.Thread(target=work, name=f"{name}-{number}", daemon=True)
        for number in range(min(limit or len(calls), len(calls)))
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise failures[0]
    return results  # type: ignore[return-value]
