"""The Databento client facade: the SDK calls this tool makes, paced, retried and translated.

It uses the SDK's public API only (its insides: client.sdk); batch files come through the
ranged fetcher (client.files). `databento` (and pandas behind it) is imported lazily: a cached
re-run never pays for it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from backend.jobs.client.files import FileFetcher
from backend.jobs.client.jobfiles import JobFile
from backend.jobs.client.retry import RATE_LIMITED_HOLD_S, Pacer, RetryPolicy, retrying
from backend.jobs.client.sdk import close_leaked_file, historical
from backend.jobs.client.translate import (
    JOB_GONE_STATUSES,
    server_reason,
    translatable,
    translate_error,
)
from backend.jobs.core.concurrency import run_concurrently
from backend.jobs.core.ranges import (
    STYPE_IN,
    STYPE_OUT,
    TimeRange,
    parse_timestamp_ns,
    symbology_end_date,
)
from backend.jobs.core.request import DEFAULT_TIMEOUT_S, JobRequest, RangeRequest
from backend.jobs.core.secret import Secret
from backend.jobs.errors import (
    CredentialsError,
    IngestError,
    JobGoneError,
    TransientError,
)

if TYPE_CHECKING:
    import requests


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
        session: requests.Session | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        try:
            self._sdk = historical(key.reveal(), gateway, timeout_s)
        except ValueError as exc:
            raise CredentialsError(f"the API key was refused by the SDK: {exc}") from None
        self._timeout_s = timeout_s
        self._policy = policy or RetryPolicy()
        self._stop = stop or threading.Event()
        self._pacer = pacer or Pacer()  # a cluster worker paces its share of the rates
        self._files = FileFetcher(
            key,
            urlsplit(self._sdk.gateway).hostname,
            timeout_s=timeout_s,
            stop=self._stop,
            session=session,
        )

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
            close_leaked_file(exc, path)
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
        """Fetch one job file into `path`, resuming a partial one (client.files)."""
        self._files.fetch(file, path, job_id)

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
        error = translate_error(exc, what, self._timeout_s)
        if isinstance(error, TransientError) and error.rate_limited:
            wait = error.retry_after or RATE_LIMITED_HOLD_S
            self._pacer.hold(min(wait, self._policy.max_retry_after_s))
        return error


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
