"""A batch job as this tool asks for it and remembers it: `batch-job.json`, one owner.

The record lives beside each member's parts (`{YEAR}/.parts/{PRODUCT}/batch-job.json`, in the
data dir's store: a bucket's records are seen by every machine) from before the submit until
the product is published, so a run killed at any moment resumes with the job it paid for:

    {"format": 1, "job_id": null, "request": {...}, "submitted_since": "..."}   submitting
    {"format": 1, "job_id": "XNAS-...", "request": {...}, "cost_usd": 1.2, ...} submitted

A record without a job id means the answer to a submit may have been lost: the next run
looks the job up (`batch.list_jobs` since that moment) before it ever submits again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from backend.jobs.plan import STYPE_IN, STYPE_OUT, TimeRange, parse_timestamp_ns

if TYPE_CHECKING:
    from backend.jobs.store import Store

STATE_FILE = "batch-job.json"
STATE_FORMAT = 1
# How far before a recorded submit a lost job is looked for (clocks differ a little).
CLOCK_SLACK = timedelta(minutes=10)
SUPPORT_SUFFIX = ".json"  # metadata.json, symbology.json, condition.json, manifest.json


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
                and sorted(details.get("symbols") or []) == sorted(self.symbols)
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


@dataclass(frozen=True)
class JobRecord:
    request: JobRequest
    job_id: str | None = None  # None: submitting; the answer may have been lost
    cost_usd: float | None = None
    submitted_since: str = ""  # when the submit was about to be sent (UTC, ISO)

    @classmethod
    def submitting(cls, request: JobRequest) -> JobRecord:
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return cls(request, submitted_since=now)

    def submitted(self, job_id: str, cost_usd: float | None) -> JobRecord:
        return replace(self, job_id=job_id, cost_usd=cost_usd)

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
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_record(store: Store, key: str, record: JobRecord) -> None:
    """Durably, before the step it enables: a killed run (or another machine) must find it."""
    store.put(key, (json.dumps(record.as_json(), indent=2) + "\n").encode())


@dataclass(frozen=True)
class JobFile:
    """One file of a finished job, as `batch.list_files` describes it."""

    filename: str
    size: int
    sha256: str
    url: str

    @property
    def is_data(self) -> bool:
        """Support files (JSON) describe the job; every other file must be a DBN stream of it.

        Only the kind is read from the name: what a data file holds, and its place in the
        year, come from its own DBN metadata.
        """
        return not self.filename.endswith(SUPPORT_SUFFIX)

    @classmethod
    def parse(cls, raw: Any) -> JobFile:
        algorithm, _, digest = str(raw["hash"]).partition(":")
        if algorithm != "sha256" or len(digest) != 64:
            raise ValueError(f"unsupported hash {raw['hash']!r}")
        name = str(raw["filename"])
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"unsafe file name {name!r}")
        return cls(name, int(raw["size"]), digest.lower(), str(raw["urls"]["https"]))
