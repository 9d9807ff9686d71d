"""SDK and HTTP failures as our errors: their class decides the retry and the exit code."""

from __future__ import annotations

import re
from typing import Any

from backend.jobs.client.sdk import timed_out, write_error
from backend.jobs.core.request import DEFAULT_TIMEOUT_S
from backend.jobs.errors import (
    DISK_FULL_ERRNOS,
    CredentialsError,
    DiskFullError,
    IngestError,
    InvalidInputError,
    NoDataError,
    TransientError,
)

# The 422 case the service answers when a range holds nothing to resolve (e.g. no session day).
NOTHING_TO_RESOLVE = "symbology_invalid_request"
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
JOB_GONE_STATUSES = frozenset({404, 410})  # a batch job expired or unknown to the service


def translatable() -> tuple[type[BaseException], ...]:
    """What the SDK and its transport raise for failures that are not bugs of ours.

    Anything else (a TypeError in our code, say) is left to surface as the bug it is. The
    SDK's synchronous calls go through requests only (aiohttp serves its async ones).
    """
    import databento
    import requests

    return (databento.BentoError, requests.RequestException, OSError)


def translate_error(
    exc: BaseException, what: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> IngestError:
    """Map an SDK or transport exception to the error class that decides retry and exit code."""
    import databento
    import requests

    if isinstance(exc, databento.BentoHttpError):
        return http_error(exc.http_status, server_reason(exc), exc.headers, what)
    disk_error = write_error(exc)
    if disk_error is not None:
        full = disk_error.errno in DISK_FULL_ERRNOS
        return (DiskFullError if full else IngestError)(
            f"cannot write {what} to disk: {disk_error.strerror}"
        )
    if isinstance(exc, requests.exceptions.SSLError):
        return IngestError(
            f"TLS verification failed for the gateway while fetching {what}: "
            "check --gateway and REQUESTS_CA_BUNDLE"
        )
    if timed_out(exc):
        return TransientError(f"{what}: no answer for {timeout_s:g}s (--timeout)")
    if isinstance(exc, OSError) and not isinstance(exc, requests.RequestException):
        return IngestError(f"{what}: {exc.strerror or exc}")
    return TransientError(f"{what}: {_first_line(exc)}")  # a dropped connection, a cut stream


def http_error(status: int, reason: str, headers: Any, what: str) -> IngestError:
    """An HTTP error answer from Databento, by its status."""
    if status in (401, 403):
        return CredentialsError(
            f"Databento rejected the API key ({status} {reason}): check DATABENTO_API_KEY "
            "and the key's permissions in the Databento portal"
        )
    if status in RETRYABLE_STATUSES:
        return TransientError(
            f"{what}: HTTP {status} {reason}", retry_after(headers), rate_limited=status == 429
        )
    if status == 422 and reason.startswith(NOTHING_TO_RESOLVE):
        return NoDataError(f"Databento cannot serve {what}: {reason}")
    if status in (400, 404, 422):
        return InvalidInputError(f"Databento cannot serve {what}: {reason}")
    return IngestError(f"Databento refused {what}: HTTP {status} {reason}")


def server_reason(exc: Any) -> str:
    """`case: message` from a Databento error body, or whatever text it carried."""
    detail = (exc.json_body or {}).get("detail") if isinstance(exc.json_body, dict) else None
    if isinstance(detail, dict):
        case, message = detail.get("case"), detail.get("message")
        return f"{case}: {message}" if case else str(message)
    if isinstance(detail, list):
        return "; ".join(str(item.get("msg", item)) for item in detail if isinstance(item, dict))
    if detail:
        return str(detail)
    message = str(exc.message or "").strip()
    if not message:  # `502 Bad Gateway` after `HTTP 502`: the page's title without the status
        title = _page_title(getattr(exc, "http_body", None))
        message = title.removeprefix(f"{getattr(exc, 'http_status', '')} ")
    return message or "no reason given"


def _page_title(body: Any) -> str:
    """What a non-JSON error page says (a proxy's `502 Bad Gateway`): its title or first line."""
    text = str(body or "")
    title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title:
        return " ".join(title[1].split())[:200]
    lines = [line.strip() for line in re.sub(r"<[^>]*>", "\n", text).splitlines()]
    return next((line[:200] for line in lines if line), "")


def retry_after(headers: Any) -> float | None:
    """Seconds from a `Retry-After` header; None without one or if it is not a number."""
    value = (headers or {}).get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
