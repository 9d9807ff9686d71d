"""A batch job as this tool asks for it and remembers it: `batch-job.json`, one owner.

The record lives beside each member's parts (`{YEAR}/.parts/{PRODUCT}/batch-job.json`, in the
data dir's store: a bucket's records are seen by every machine) from before the submit until
the product is published, so a run killed at any moment resumes with the job it paid for:

    {"format": 1, "job_id": null, "request": {...}, "submitted_since": "..."}   submitting
    {"format": 1, "job_id": "XNAS-...", "request": {...}, "cost_usd": 1.2, ...} submitted
    {"format": 1, "job_id": "XNAS-...", ..., "failed": "its files hold ..."}     unusable

A failed record names a paid job whose files failed validation: kept for inspection, never
used again (batch.resume_recorded_jobs).

A record without a job id means the answer to a submit may have been lost: the next run
looks the job up (`batch.list_jobs` since that moment) before it ever submits again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from backend.jobs.core.ranges import STYPE_IN, STYPE_OUT, TimeRange, parse_timestamp_ns

if TYPE_CHECKING:
    from backend.jobs.store.base import Store

STATE_FILE = "batch-job.json"
STATE_FORMAT = 1
# How far before a recorded submit a lost job is looked for (clocks differ a little).
CLOCK_SLACK = timedelta(minutes=10)
SUPPORT_SUFFIX = ".json"  # metadata.json, symbology.json, condition.json, manifest.json
HEX_DIGITS = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class JobRequest:
    """What one batch job asks for: the group's symbols over the exact streaming range."""

    dataset: str
    symbols: tuple[str, ...]
    schema: str
    span: TimeRange
    split_duration: str

    def submit_params(self) -> dict[str, Any]:
        return {
            **self.as_json(),
            "encoding": "dbn",
            "compression": "zstd",
            "split_symbols": False,
            "stype_in": STYPE_IN,
            "stype_out": STYPE_OUT,
            "delivery": "download",
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "symbols": list(self.symbols),
            "schema": self.schema,
            "start": self.span.start,
            "end": self.span.end,
            "split_duration": self.split_duration,
        }

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> JobRequest:
        return cls(
            dataset=str(raw["dataset"]),
            symbols=tuple(str(symbol) for symbol in raw["symbols"]),
            schema=str(raw["schema"]),
            span=TimeRange(parse_timestamp_ns(raw["start"]), parse_timestamp_ns(raw["end"])),
            split_duration=str(raw["split_duration"]),
        )

    def answered_by(self, details: dict[str, Any]) -> bool:
        """Whether a job the service describes is this request (a lost submit's answer)."""
        try:
            return (
                details.get("dataset") == self.dataset
                and details.get("schema") == self.schema
                and job_symbols(details.get("symbols")) == _symbol_set(self.symbols)
                and parse_timestamp_ns(str(details.get("start"))) == self.span.start_ns
                and parse_timestamp_ns(str(details.get("end"))) == self.span.end_ns
                and details.get("split_duration") == self.split_duration
                and details.get("encoding") == "dbn"
                and details.get("compression") == "zstd"
                and not details.get("split_symbols")
                and details.get("stype_in", STYPE_IN) == STYPE_IN
                and details.get("stype_out", STYPE_OUT) == STYPE_OUT
            )
        except ValueError:
            return False

    def covers(self, symbol: str, dataset: str, schema: str, span: TimeRange) -> bool:
        """Whether this job holds exactly what a symbol-year-product needs."""
        return (
            symbol in self.symbols
            and self.dataset == dataset
            and self.schema == schema
            and self.span == span
        )


def job_symbols(raw: Any) -> frozenset[str] | None:
    """The symbols of a job object, as a set; None when they are neither a string nor a list.

    Databento documents them as one comma-joined string (`"ZC.FUT,ES.FUT"` in the example of
    `batch.get_job_details`); its C++ and Rust clients also accept an array (the C++ one notes a
    single symbol may come as a plain string). Order and repeats carry no meaning, and the SDK
    upper-cases symbols before sending them, so both sides are compared in that form.
    """
    if isinstance(raw, str):
        return _symbol_set(raw.split(","))
    if isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
        return _symbol_set(raw)
    return None


def _symbol_set(symbols: Any) -> frozenset[str]:
    return frozenset(name.strip().upper() for name in symbols if name.strip())


@dataclass(frozen=True)
class JobRecord:
    request: JobRequest
    job_id: str | None = None  # None: submitting; the answer may have been lost
    cost_usd: float | None = None
    submitted_since: str = ""  # when the submit was about to be sent (UTC, ISO)
    failed: str | None = None  # why its files cannot be used (validation), else None

    @classmethod
    def submitting(cls, request: JobRequest) -> JobRecord:
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return cls(request, submitted_since=now)

    def submitted(self, job_id: str, cost_usd: float | None) -> JobRecord:
        return replace(self, job_id=job_id, cost_usd=cost_usd)

    def failing(self, reason: str) -> JobRecord:
        return replace(self, failed=reason)

    @property
    def look_since(self) -> str:
        """The list_jobs `since` that finds this record's job, if it was created."""
        moment = datetime.fromisoformat(self.submitted_since.replace("Z", "+00:00"))
        return (moment - CLOCK_SLACK).isoformat()

    def as_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "job_id": self.job_id,
            "cost_usd": self.cost_usd,
            "submitted_since": self.submitted_since,
            "request": self.request.as_json(),
            **({"failed": self.failed} if self.failed is not None else {}),
        }


def read_record(store: Store, key: str) -> JobRecord | None:
    """The job recorded for a product, or None (none, or a record of another shape: ignored)."""
    try:
        found = store.read(key)
        if found is None:
            return None
        raw = json.loads(found[0])
        if raw.get("format") != STATE_FORMAT:
            return None
        cost = raw.get("cost_usd")
        return JobRecord(
            request=JobRequest.parse(raw["request"]),
            job_id=str(raw["job_id"]) if raw.get("job_id") else None,
            cost_usd=float(cost) if cost is not None else None,
            submitted_since=str(raw.get("submitted_since") or ""),
            failed=str(raw["failed"]) if raw.get("failed") is not None else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_record(store: Store, key: str, record: JobRecord) -> None:
    """Durably, before the step it enables: a killed run (or another machine) must find it."""
    store.put(key, (json.dumps(record.as_json(), indent=2) + "\n").encode())


@dataclass(frozen=True)
class JobFile:
    """One file of a finished job, as `batch.list_files` describes it.

    Only `filename` and `size` are required by the published schema; `hash` and `urls` are
    nullable. `sha256` is None when the service gives no sha256 (null, absent, or another
    algorithm, which the SDK skips too): the file is then checked by its DBN content alone.
    `url` is None when it gives no https URL: the SDK cannot fetch such a file either ("'download'
    delivery is not available"), and we do not guess a path on the gateway for it, so its
    download fails with a message naming the file (client.download_file).
    """

    filename: str
    size: int
    sha256: str | None
    url: str | None

    @property
    def is_data(self) -> bool:
        """Support files (JSON) describe the job; every other file must be a DBN stream of it.

        Only the kind is read from the name: what a data file holds, and its place in the
        year, come from its own DBN metadata.
        """
        return not self.filename.endswith(SUPPORT_SUFFIX)

    @classmethod
    def parse(cls, raw: Any) -> JobFile:
        name = str(raw["filename"])
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"unsafe file name {name!r}")
        size = int(raw["size"])
        if size < 0:
            raise ValueError(f"negative size {size} of {name}")
        urls = raw.get("urls") or {}
        if not isinstance(urls, dict):
            raise TypeError(f"urls of {name} is not an object: {urls!r}")
        url = urls.get("https")
        return cls(name, size, _sha256_of(raw.get("hash")), str(url) if url else None)


def _sha256_of(value: Any) -> str | None:
    """The hex digest of a `sha256:<hex>` hash; None for no hash or another algorithm."""
    if value is None:
        return None
    algorithm, _, digest = str(value).partition(":")
    if algorithm.lower() != "sha256":
        return None
    if len(digest) != 64 or any(char not in HEX_DIGITS for char in digest.lower()):
        raise ValueError(f"malformed sha256 {value!r}")
    return digest.lower()
