"""Injected failures: error statuses, connections cut mid-body, slow responses, corrupt bytes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class Fault:
    """The next `times` requests to `endpoint` (that `match` accepts) fail this way.

    Every endpoint consults the faults (timeseries.get_range, every metadata.* endpoint,
    symbology.resolve, every batch.* endpoint, batch file downloads and unknown paths), after
    recording the request and before answering.

    endpoint: the API name the fault applies to, e.g. "metadata.get_cost" (the path after /v0/);
    "batch/download" for a batch file download (`/v0/batch/download/<user>/<job>/<file>`),
    whose params are user_id, job_id, filename and range (the Range header, "" without one).
    times: how many matching requests it hits before it is used up.
    match: called with the request's parameters (query and form); only requests it accepts
    count, e.g. `lambda params: params.get("schema") == "tbbo"`.
    status: answer with this HTTP status and a realistic JSON error body (`detail` overrides
    the body's detail) plus `Retry-After` when `retry_after` is set.
    retry_after: the `Retry-After` header value sent with `status` (seconds, any size, e.g.
    86400; a string is sent verbatim).
    detail: the error body's `detail` verbatim, instead of the realistic one for `status`.
    cut_after_bytes: send the response normally but drop the connection after that many body
    bytes, without the final zero-length chunk (also when the body is shorter). A body with a
    Content-Length (JSON, batch files) stops before its last byte at the latest, so the client
    always sees a short read.
    delay_s: stall the first byte: wait this long before sending anything, status line
    included (a client's read timeout fires before the response starts).
    stall_after_bytes, stall_s: stall mid-body: send the status, headers and that many body
    bytes, then send nothing for `stall_s` seconds with the connection left open (a client's
    read timeout fires mid-stream), then the rest. A body no longer than that stalls before
    its final zero-length chunk; a JSON body stalls before its last byte at the latest. Both
    fields go together; use a large `stall_s` to stall until reset().
    corrupt_at_byte: flip one byte (xor 0xFF) at this offset of the response body as sent,
    counted from the first byte of this response's body (a ranged batch download flips its own
    byte); a body no longer than that is sent intact. Slow batch processing is not a fault:
    see SandboxGateway.batch_processing_s.

    reset() and stop() end every `delay_s`/`stall_s` wait in progress and drop its connection,
    so an abandoned stalled request never holds a handler thread.
    """

    endpoint: str = "timeseries.get_range"
    status: int | None = None
    times: int = 1
    retry_after: int | float | str | None = None
    cut_after_bytes: int | None = None
    match: Callable[[dict[str, str]], bool] | None = None
    detail: dict[str, Any] | str | None = None
    delay_s: float = 0.0
    stall_after_bytes: int | None = None
    stall_s: float = 0.0
    corrupt_at_byte: int | None = None

    def __post_init__(self) -> None:
        if (
            self.status is None
            and self.cut_after_bytes is None
            and self.delay_s <= 0
            and self.stall_after_bytes is None
            and self.corrupt_at_byte is None
        ):
            raise ValueError(
                "a Fault needs a status, cut_after_bytes, delay_s, stall_after_bytes "
                "or corrupt_at_byte"
            )
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"fault status must be 4xx/5xx, got {self.status}")
        if self.times < 1:
            raise ValueError("times must be >= 1")
        if self.cut_after_bytes is not None and self.cut_after_bytes < 0:
            raise ValueError("cut_after_bytes must be >= 0")
        if (self.stall_after_bytes is None) != (self.stall_s <= 0):
            raise ValueError("stall_after_bytes and a positive stall_s go together")
        if self.stall_after_bytes is not None and self.stall_after_bytes < 0:
            raise ValueError("stall_after_bytes must be >= 0")
        if self.corrupt_at_byte is not None and self.corrupt_at_byte < 0:
            raise ValueError("corrupt_at_byte must be >= 0")

    @property
    def retry_after_header(self) -> str | None:
        if self.retry_after is None:
            return None
        if isinstance(self.retry_after, float) and self.retry_after.is_integer():
            return str(int(self.retry_after))
        return str(self.retry_after)

    def matches(self, endpoint: str, params: dict[str, str]) -> bool:
        if endpoint != self.endpoint:
            return False
        if self.match is None:
            return True
        try:
            return bool(self.match(params))
        except Exception:
            logger.exception("fault match callable raised; treating as no match")
            return False


@dataclass
class _ArmedFault:
    fault: Fault
    remaining: int = field(init=False)

    def __post_init__(self) -> None:
        self.remaining = self.fault.times


class FaultBook:
    """Armed faults, consumed in the order they were added (thread-safe)."""

    def __init__(self) -> None:
        self._armed: list[_ArmedFault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._armed.append(_ArmedFault(fault))

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def take(self, endpoint: str, params: dict[str, str]) -> Fault | None:
        """Consume one use of the first fault matching this request."""
        with self._lock:
            for armed in self._armed:
                if armed.fault.matches(endpoint, params):
                    armed.remaining -= 1
                    if armed.remaining == 0:
                        self._armed.remove(armed)
                    return armed.fault
        return None
