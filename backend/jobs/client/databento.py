"""The one place that builds `databento.Historical` and turns its errors into ours.

`databento` (and pandas behind it) is imported lazily: a cached re-run never pays for it.
"""

from __future__ import annotations

import errno
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from backend.jobs.client.jobfiles import JobFile
from backend.jobs.client.retry import RATE_LIMITED_HOLD_S, Pacer, RetryPolicy, retrying
from backend.jobs.core.concurrency import run_concurrently
from backend.jobs.core.ranges import (
    STYPE_IN,
    STYPE_OUT,
    TimeRange,
    parse_timestamp_ns,
    symbology_end_date,
)
from backend.jobs.core.request import DEFAULT_TIMEOUT_S, JobRequest, RangeRequest
from backend.jobs.errors import (
    DISK_FULL_ERRNOS,
    CancelledError,
    CredentialsError,
    DiskFullError,
    IngestError,
    InvalidInputError,
    JobGoneError,
    NoDataError,
    TransientError,
)

if TYPE_CHECKING:
    from backend.jobs.settings import Secret

# The 422 case the service answers when a range holds nothing to resolve (e.g. no session day).
NOTHING_TO_RESOLVE = "symbology_invalid_request"
WRITE_ERRNOS = DISK_FULL_ERRNOS | {errno.EROFS, errno.EACCES}
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
JOB_GONE_STATUSES = frozenset({404, 410})  # a batch job expired or unknown to the service
DOWNLOAD_BLOCK = 1 << 16  # a cut answer loses at most the block in flight (urllib3 2)
# Hosts a batch file may be fetched from with the API key, besides the gateway's own.
DOWNLOAD_DOMAIN = "databento.com"


class DatabentoClient:
    """A thin facade over the SDK calls we make; every SDK exception leaves as an IngestError.

    Metadata and symbology calls are retried here with the run's policy; chunk downloads are
    retried by the chunk engine, which also validates what arrived.
    """

    def __init__(
        self,
        key: Secret,
        gateway: str | None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        policy: RetryPolicy | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        import databento

        options: dict[str, str] = {"key": key.reveal()}
        if gateway:
            options["gateway"] = gateway
        try:
            self._sdk = databento.Historical(**options)
        except ValueError as exc:
            raise CredentialsError(f"the API key was refused by the SDK: {exc}") from None
        # The SDK reads BentoHttpAPI.TIMEOUT (connect and read, seconds) on every request; an
        # instance attribute shadows the class's 100 s (pinned by a test).
        for api in (self._sdk.metadata, self._sdk.symbology, self._sdk.timeseries, self._sdk.batch):
            api.TIMEOUT = timeout_s
        self._key = key
        self._gateway_host = urlsplit(self._sdk.gateway).hostname
        self.timeout_s = timeout_s
        self._policy = policy or RetryPolicy()
        self._stop = stop or threading.Event()
        self._pacer = Pacer()

    def dataset_range(self, dataset: str) -> dict[str, TimeRange]:
        """Per-schema available [start, end); top-level end is a max over schemas, so not used."""
        what = f"dataset range of {dataset}"
        answer = self._call(self._sdk.metadata.get_dataset_range, what, dataset)
        try:
            default = TimeRange(
                parse_timestamp_ns(answer["start"]), parse_timestamp_ns(answer["end"])
            )
            ranges = {}
            for schema, bounds in (answer.get("schema") or {}).items():
                if bounds and bounds.get("start") and bounds.get("end"):
                    ranges[schema] = TimeRange(
                        parse_timestamp_ns(bounds["start"]), parse_timestamp_ns(bounds["end"])
                    )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IngestError(f"unexpected answer from Databento for the {what}: {exc!r}") from None
        ranges.setdefault("*", default)
        return ranges

    def download(self, request: RangeRequest, path: Path) -> None:
        """Stream one range to `path`, which must not exist (the SDK opens it with `x`)."""
        what = f"{request.schema} {request.span}"
        self._pacer.wait("timeseries", self._stop)
        try:
            store = self._sdk.timeseries.get_range(path=path, **request.params())
        except translatable() as exc:
            _close_leaked_writer(exc, path)
            raise self._translated(exc, what) from None
        # The returned store keeps the file open; we only wanted the bytes on disk.
        store.reader.close()

    def resolve(self, dataset: str, symbols: list[str], span: TimeRange) -> dict[str, Any]:
        """raw_symbol -> instrument_id intervals over the dates of `span`, for many symbols."""
        named = symbols[0] if len(symbols) == 1 else f"{len(symbols)} symbols"
        return self._call(
            self._sdk.symbology.resolve,
            f"symbology of {named}",
            dataset=dataset,
            symbols=symbols,
            stype_in=STYPE_IN,
            stype_out=STYPE_OUT,
            start_date=span.start[:10],
            end_date=_end_date(span),
        )

    def estimate(self, request: RangeRequest) -> tuple[int, float]:
        """Billable bytes and USD for a range, as the server prices it."""
        params = request.params()
        params.pop("stype_out")
        what = f"estimate for {request.schema} {request.span}"
        size, cost = run_concurrently(
            [
                lambda: self._call(self._sdk.metadata.get_billable_size, what, **params),
                lambda: self._call(self._sdk.metadata.get_cost, what, **params),
            ],
            "estimate",
        )
        try:
            return int(size), float(cost)
        except (TypeError, ValueError) as exc:
            raise IngestError(f"unexpected answer from Databento for the {what}: {exc}") from None

    # batch jobs

    def submit_job(self, job: JobRequest, what: str) -> dict[str, Any]:
        """Billed: sent once and never retried here (a lost answer is looked up first)."""
        self._pacer.wait("submit", self._stop)
        try:
            answer = self._sdk.batch.submit_job(**job.submit_params())
        except translatable() as exc:
            raise self._translated(exc, f"submit of a batch job for {what}") from None
        if not isinstance(answer, dict) or not answer.get("id"):
            raise IngestError(f"unexpected answer from Databento to the batch submit: {answer!r}")
        return answer

    def job_details(self, job_id: str) -> dict[str, Any]:
        answer = self._call(
            self._sdk.batch.get_job_details, f"batch job {job_id}", job_id, job_id=job_id
        )
        if not isinstance(answer, dict) or "state" not in answer:
            raise IngestError(f"unexpected answer from Databento for batch job {job_id}")
        return answer

    def jobs_since(self, since: str) -> list[dict[str, Any]]:
        """Every live job submitted since `since` (short form: id, state, ts_received).

        Sent without `states`, on purpose. The filter is documented to take only `queued`,
        `processing`, `done` and `expired` (the SDK's `JobState` has nothing else, and a service
        that validates it refuses `received` with a 422), yet a job can still *show* `received`
        just after its submit, and whether a `queued` filter matches such a job is not
        documented. Left out, the filter is the service's default, documented as "all except
        expired": the one documented way to ask for a job whatever state it has reached (the
        Rust client lists jobs the same way). Expired jobs are not needed: one that expired can
        never be used, so a new job would be submitted all the same.
        """
        answer = self._call(
            self._sdk.batch.list_jobs, "list of batch jobs", states=None, since=since
        )
        if not isinstance(answer, list):
            raise IngestError("unexpected answer from Databento for the list of batch jobs")
        return [job for job in answer if isinstance(job, dict) and job.get("id")]

    def job_files(self, job_id: str) -> list[JobFile]:
        what = f"files of batch job {job_id}"
        answer = self._call(self._sdk.batch.list_files, what, job_id, job_id=job_id)
        try:
            return [JobFile.parse(item) for item in answer]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IngestError(f"unexpected answer from Databento for the {what}: {exc}") from None

    def download_file(self, file: JobFile, path: Path, job_id: str) -> None:
        """Fetch one job file into `path`, continuing what an earlier attempt or run left.

        A partial file is resumed with `Range`; an answer that is not the asked range (a
        server ignoring Range) restarts it from zero rather than appending the wrong bytes.
        The caller checks the sha256; a cut answer leaves a valid prefix to resume from.
        """
        import requests

        url = self._check_download_url(file, job_id)
        what = f"{file.filename} of batch job {job_id}"
        have = path.stat().st_size if path.exists() else 0
        if have > file.size:
            path.unlink()
            have = 0
        if have == file.size:
            return
        headers = {"Range": f"bytes={have}-{file.size - 1}"} if have else {}
        auth = requests.auth.HTTPBasicAuth(self._key.reveal(), "")
        timeout = (self.timeout_s, self.timeout_s)
        try:
            with requests.get(
                url, headers=headers, auth=auth, stream=True, timeout=timeout
            ) as response:
                mode = self._download_mode(response, have, file, what, job_id)
                with path.open(mode) as handle:
                    for block in response.iter_content(DOWNLOAD_BLOCK):
                        if self._stop.is_set():
                            raise CancelledError(f"{what}: cancelled")
                        handle.write(block)
        except translatable() as exc:
            raise self._translated(exc, what) from None
        got = path.stat().st_size
        if got != file.size:
            raise TransientError(f"{what}: {got} of {file.size} bytes arrived")

    def _check_download_url(self, file: JobFile, job_id: str) -> str:
        """The file's https URL, if the key may go there: https on the gateway's host or
        Databento's own domain."""
        if file.url is None:
            raise IngestError(
                f"batch job {job_id} lists {file.filename} without an https URL: Databento "
                "offers no download of it (the SDK cannot fetch it either)"
            )
        parts = urlsplit(file.url)
        host = (parts.hostname or "").lower()
        ours = host == self._gateway_host or host.endswith("." + DOWNLOAD_DOMAIN)
        if parts.scheme != "https" or not ours:
            raise IngestError(
                f"batch file {file.filename} is served from {parts.scheme}://{host}, which is "
                "neither https on the gateway's host nor Databento's: not sending the API key there"
            )
        return file.url

    def _download_mode(
        self, response: Any, have: int, file: JobFile, what: str, job_id: str
    ) -> str:
        """How to write the answer to a (ranged) file request: append, start over, or fail."""
        status = response.status_code
        if status == 206:
            expected = f"bytes {have}-{file.size - 1}/{file.size}"
            if response.headers.get("Content-Range", "").strip() != expected:
                raise TransientError(f"{what}: the server answered another range than asked")
            return "ab"
        if status == 200:
            return "wb"  # the whole file: start over
        if status == 416:
            raise TransientError(f"{what}: the server refused the range; starting over")
        reason = response.text.strip().splitlines()[0][:200] if response.text else ""
        if status in JOB_GONE_STATUSES:
            raise JobGoneError(job_id, f"{what}: HTTP {status} {reason}")
        if status in (401, 403):
            raise CredentialsError(
                f"Databento rejected the API key ({status}) for {what}: check DATABENTO_API_KEY"
            )
        if status in RETRYABLE_STATUSES:
            raise TransientError(
                f"{what}: HTTP {status} {reason}",
                _retry_after(response.headers),
                rate_limited=status == 429,
            )
        raise IngestError(f"Databento refused {what}: HTTP {status} {reason}")

    def _call(
        self, method: Any, what: str, *args: Any, job_id: str | None = None, **kwargs: Any
    ) -> Any:
        """One metadata, symbology or batch call, paced and retried like a chunk.

        With `job_id`, a 404 or 410 says the job is gone (expired or unknown): JobGoneError.
        """
        family = "symbology" if method == self._sdk.symbology.resolve else "metadata"

        def once() -> Any:
            self._pacer.wait(family, self._stop)
            try:
                return method(*args, **kwargs)
            except translatable() as exc:
                if job_id and getattr(exc, "http_status", None) in JOB_GONE_STATUSES:
                    raise JobGoneError(job_id, f"{what}: {server_reason(exc)}") from None
                raise self._translated(exc, what) from None

        return retrying(once, policy=self._policy, stop=self._stop, label=what)

    def _translated(self, exc: BaseException, what: str) -> IngestError:
        error = translate_error(exc, what, self.timeout_s)
        if isinstance(error, TransientError) and error.rate_limited:
            wait = error.retry_after or RATE_LIMITED_HOLD_S
            self._pacer.hold(min(wait, self._policy.max_retry_after_s))
        return error


def _close_leaked_writer(exc: BaseException, path: Path) -> None:
    """When a stream breaks, the SDK leaves its output file open (databento 0.88 http._stream).

    Close it now rather than at garbage collection, so the partial file's space is freed
    as soon as we unlink it.
    """
    traceback = exc.__traceback__
    while traceback is not None:
        writer = traceback.tb_frame.f_locals.get("writer")
        if getattr(writer, "name", None) == str(path) and not writer.closed:
            writer.close()
        traceback = traceback.tb_next


def _end_date(span: TimeRange) -> str:
    """symbology.resolve's exclusive end date: the last midnight the data reaches.

    Rounding a mid-day end up would ask past the available end, which the service refuses;
    the few hours after that midnight are matched to the last interval by the preflight.
    """
    from datetime import timedelta

    from backend.jobs.core.ranges import ns_to_datetime

    end = symbology_end_date(span)
    start = ns_to_datetime(span.start_ns).date()
    return max(end, start + timedelta(days=1)).isoformat()


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


def translatable() -> tuple[type[BaseException], ...]:
    """What the SDK and its transports raise for failures that are not bugs of ours.

    Anything else (a TypeError in our code, say) is left to surface as the bug it is.
    """
    import aiohttp
    import databento
    import requests

    return (databento.BentoError, requests.RequestException, aiohttp.ClientError, OSError)


def translate_error(  # noqa: PLR0911
    exc: BaseException, what: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> IngestError:
    """Map an SDK or transport exception to the error class that decides retry and exit code."""
    import databento
    import requests

    if isinstance(exc, databento.BentoHttpError):
        status = exc.http_status
        reason = server_reason(exc)
        if status in (401, 403):
            return CredentialsError(
                f"Databento rejected the API key ({status} {reason}): check DATABENTO_API_KEY "
                "and the key's permissions in the Databento portal"
            )
        if status in RETRYABLE_STATUSES:
            return TransientError(
                f"{what}: HTTP {status} {reason}",
                _retry_after(exc.headers),
                rate_limited=status == 429,
            )
        if status == 422 and reason.startswith(NOTHING_TO_RESOLVE):
            return NoDataError(f"Databento cannot serve {what}: {reason}")
        if status in (400, 404, 422):
            return InvalidInputError(f"Databento cannot serve {what}: {reason}")
        return IngestError(f"Databento refused {what}: HTTP {status} {reason}")
    disk_error = _os_error_in(exc)
    if disk_error is not None and disk_error.errno in DISK_FULL_ERRNOS:
        return DiskFullError(f"cannot write {what} to disk: {disk_error.strerror}")
    if disk_error is not None:
        return IngestError(f"cannot write {what} to disk: {disk_error.strerror}")
    if isinstance(exc, requests.exceptions.SSLError):
        return IngestError(
            f"TLS verification failed for the gateway while fetching {what}: "
            "check --gateway and REQUESTS_CA_BUNDLE"
        )
    if _timed_out(exc):
        return TransientError(f"{what}: no answer for {timeout_s:g}s (--timeout)")
    if isinstance(exc, requests.exceptions.RequestException | databento.BentoError):
        return TransientError(f"{what}: {_first_line(exc)}")
    if isinstance(exc, OSError):
        return IngestError(f"{what}: {exc.strerror or exc}")
    return TransientError(f"{what}: {_first_line(exc)}")  # aiohttp's connection errors


def _timed_out(exc: BaseException) -> bool:
    """A read or connect timeout, also when the SDK wrapped it in a BentoError."""
    import requests

    timeouts = (requests.exceptions.Timeout, TimeoutError)
    text = str(exc)
    return isinstance(exc, timeouts) or "timed out" in text


def _os_error_in(exc: BaseException) -> OSError | None:
    """The SDK wraps write failures in BentoError `from None`; the cause stays in __context__."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _retry_after(headers: Any) -> float | None:
    value = (headers or {}).get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
