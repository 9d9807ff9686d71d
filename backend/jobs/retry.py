"""One retry policy for every call to Databento: chunks, metadata and symbology alike."""

from __future__ import annotations

import random
import threading
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
DEFAULT_TIMEOUT_S = 30.0


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
