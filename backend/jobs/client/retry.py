"""One retry policy for every call to Databento: chunks, metadata and symbology alike."""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from loguru import logger

from backend.jobs.errors import CancelledError, IngestError, TransientError

T = TypeVar("T")

# The longest Retry-After this tool sleeps through; a server asking for more is told no.
MAX_RETRY_AFTER_S = 60.0
# Seconds without a byte before a request is given up (--timeout); the SDK's own is 100 s.


# Databento's documented request rates per second (historical API), kept below.
REQUEST_RATES = {"timeseries": 100.0, "symbology": 100.0, "metadata": 20.0}
# batch.submit_job: 20 a minute, in any rhythm (a universe submits its groups at once).
SUBMITS_PER_WINDOW, SUBMIT_WINDOW_S = 20, 60.0
RATE_LIMITED_HOLD_S = 1.0  # how long a 429 without Retry-After holds every request back


class Pacer:
    """Spaces out the starts of requests to stay under the service's rates, run-wide.

    After a 429 every request of the run waits, not only the one that got it: the whole run
    slows down together.
    """

    def __init__(self, rates: dict[str, float] | None = None) -> None:
        self._interval = {family: 1 / rate for family, rate in (rates or REQUEST_RATES).items()}
        self._next = dict.fromkeys(self._interval, 0.0)
        self._submits: collections.deque[float] = collections.deque(maxlen=SUBMITS_PER_WINDOW)
        self._resume = 0.0
        self._lock = threading.Lock()

    def wait(self, family: str, stop: threading.Event) -> None:
        with self._lock:
            now = time.monotonic()
            if family == "submit":
                full = len(self._submits) == SUBMITS_PER_WINDOW
                start = max(now, self._resume, self._submits[0] + SUBMIT_WINDOW_S if full else 0)
                self._submits.append(start)
            else:
                start = max(now, self._next[family], self._resume)
                self._next[family] = start + self._interval[family]
        if start > now and stop.wait(start - now):
            raise CancelledError(f"{family} request: cancelled")

    def hold(self, seconds: float) -> None:
        """No request starts for `seconds` from now (a 429 was answered)."""
        with self._lock:
            self._resume = max(self._resume, time.monotonic() + seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter; the server's Retry-After wins when longer."""

    retries: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = MAX_RETRY_AFTER_S

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = min(self.max_delay_s, self.base_delay_s * 2**attempt)
        jittered = backoff * (0.5 + rng.random() / 2)
        return max(jittered, retry_after or 0.0)

    def refuses_wait(self, retry_after: float | None) -> bool:
        return retry_after is not None and retry_after > self.max_retry_after_s


def retrying(
    call: Callable[[], T],
    *,
    policy: RetryPolicy,
    stop: threading.Event,
    label: str,
    retry_on: tuple[type[IngestError], ...] = (TransientError,),
) -> T:
    """`call()` until it succeeds, retrying `retry_on` errors; never sleeps through a stop.

    A Retry-After above the policy's cap fails at once, saying when the server asks to retry.
    """
    rng = random.Random()  # noqa: S311  jitter, not cryptography
    attempts = policy.retries + 1
    for attempt in range(attempts):
        if stop.is_set():
            raise CancelledError(f"{label}: cancelled")
        try:
            return call()
        except retry_on as exc:
            retry_after = getattr(exc, "retry_after", None)
            if policy.refuses_wait(retry_after):
                when = datetime.now(UTC) + timedelta(seconds=retry_after or 0)
                raise IngestError(
                    f"{label}: {exc}; the server asks to retry in {retry_after:.0f}s "
                    f"(after {when:%Y-%m-%d %H:%M:%S} UTC), longer than the "
                    f"{policy.max_retry_after_s:.0f}s this tool waits: run the same command "
                    "again then (finished chunks are kept)"
                ) from None
            if attempt + 1 == attempts:
                raise IngestError(
                    f"{label} failed after {attempts} attempts: {exc}; "
                    "run the same command again to resume (finished chunks are kept)"
                ) from None
            delay = policy.delay(attempt, retry_after, rng)
            logger.warning(
                "{}: retry {}/{} in {:.1f}s after: {}",
                *(label, attempt + 1, policy.retries, delay, exc),
            )
            if stop.wait(delay):
                raise CancelledError(f"{label}: cancelled") from None
    raise AssertionError("unreachable")  # pragma: no cover
