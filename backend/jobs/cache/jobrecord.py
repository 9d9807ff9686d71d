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

from backend.jobs.core.request import JobRequest

if TYPE_CHECKING:
    from backend.jobs.store.base import Store

STATE_FILE = "batch-job.json"
STATE_FORMAT = 1
# How far before a recorded submit a lost job is looked for (clocks differ a little).
CLOCK_SLACK = timedelta(minutes=10)


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
