"""One retry policy for every call to Databento (chunks, metadata, symbology, job files), run
by tenacity; the pacing that keeps a whole run under the service's rates."""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from loguru import logger

from backend.jobs.errors import IngestError, RunStoppedError, TransientError

if TYPE_CHECKING:
    from tenacity import RetryCallState

T = TypeVar("T")

# The longest Retry-After this tool sleeps through; a server asking for more is told no.
MAX_RETRY_AFTER_S = 60.0
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

    def __init__(self, rates: dict[str, float] | None = None, *, share: float = 1.0) -> None:
        """`share`: this process's part of the rates and of the batch submits (one of a
        cluster's workers paces 1 / workers of each)."""
        rates = rates or REQUEST_RATES
        self._interval = {family: 1 / (rate * share) for family, rate in rates.items()}
        self._next = dict.fromkeys(self._interval, 0.0)
        self._submits_per_window = max(1, int(SUBMITS_PER_WINDOW * share))
        self._submits: collections.deque[float] = collections.deque(maxlen=self._submits_per_window)
        self._resume = 0.0
        self._lock = threading.Lock()

    def wait(self, family: str, stop: threading.Event) -> None:
        with self._lock:
            now = time.monotonic()
            if family == "submit":
                full = len(self._submits) == self._submits_per_window
                start = max(now, self._resume, self._submits[0] + SUBMIT_WINDOW_S if full else 0)
                self._submits.append(start)
            else:
                start = max(now, self._next[family], self._resume)
                self._next[family] = start + self._interval[family]
        if start > now and stop.wait(start - now):
            raise RunStoppedError(f"{family} request: cancelled")

    def hold(self, seconds: float) -> None:
        """No request starts for `seconds` from now (a 429 was answered)."""
        with self._lock:
            self._resume = max(self._resume, time.monotonic() + seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter; the server's Retry-After wins when longer.

    `retries` is --retries: the attempts after the first.
    """

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
    import tenacity  # lazily: a cached re-run never retries anything

    rng = random.Random()  # noqa: S311  jitter, not cryptography

    def attempt() -> T:
        if stop.is_set():  # set during a wait, or before the first attempt
            raise RunStoppedError(f"{label}: cancelled")
        return call()

    def worth_retrying(exc: BaseException) -> bool:
        return isinstance(exc, retry_on) and not policy.refuses_wait(_retry_after(exc))

    def wait(state: RetryCallState) -> float:  # the Retry-After of the failure, if longer
        failure = state.outcome.exception()  # type: ignore[union-attr]
        return policy.delay(state.attempt_number - 1, _retry_after(failure), rng)

    def log_retry(state: RetryCallState) -> None:
        failure = state.outcome.exception()  # type: ignore[union-attr]
        logger.warning(
            "{}: retry {}/{} in {:.1f}s after: {}",
            *(label, state.attempt_number, policy.retries, state.upcoming_sleep, failure),
        )

    retryer = tenacity.Retrying(
        sleep=tenacity.sleep_using_event(stop),  # a stop ends the wait at once
        stop=tenacity.stop_after_attempt(policy.retries + 1),
        wait=wait,
        retry=tenacity.retry_if_exception(worth_retrying),
        before_sleep=log_retry,
        reraise=True,
    )
    try:
        return retryer(attempt)
    except retry_on as exc:
        raise _gave_up(exc, label, policy) from None


def _gave_up(exc: IngestError, label: str, policy: RetryPolicy) -> IngestError:
    """What a caller is told when a retryable error is not retried (again)."""
    retry_after = _retry_after(exc)
    if policy.refuses_wait(retry_after):
        when = datetime.now(UTC) + timedelta(seconds=retry_after or 0)
        return IngestError(
            f"{label}: {exc}; the server asks to retry in {retry_after:.0f}s "
            f"(after {when:%Y-%m-%d %H:%M:%S} UTC), longer than the "
            f"{policy.max_retry_after_s:.0f}s this tool waits: run the same command "
            "again then (finished chunks are kept)"
        )
    return IngestError(
        f"{label} failed after {policy.retries + 1} attempts: {exc}; "
        "run the same command again to resume (finished chunks are kept)"
    )


def _retry_after(exc: BaseException | None) -> float | None:
    return getattr(exc, "retry_after", None)
