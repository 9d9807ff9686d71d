"""A batch job as this tool asks for it and remembers it: `batch-job.json`, one owner.

The record lives beside each member's parts (`{YEAR}/.parts/{PRODUCT}/batch-job.json`, in the
data dir's store: a bucket's records are seen by every machine) from before the submit until
the product is published, so a run killed at any moment resumes with the job it paid for:

    {"format": 1, "job_id": null, "request": {...}, "submitted_since": "..."}   submitting
    {"format": 1, "job_id": "XNAS-...", "request": {...}, "cost_usd": 1.2, ...} submitted
    {"format": 1, "job_id": "XNAS-...", ..., "failed": "its files hold ..."}     unusable

A failed record names a paid job whose files failed validation: kept for inspection, never
used again (plan/resume.py).

A record without a job id means the answer to a submit may have been lost: the next run
looks the job up (`batch.list_jobs` since that moment) before it ever submits again.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from backend.jobs.core.request import JobRecord, JobRequest

if TYPE_CHECKING:
    from backend.jobs.store.base import Store

STATE_FORMAT = 1


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
    raw = {"format": STATE_FORMAT, **record.as_json()}
    store.put(key, (json.dumps(raw, indent=2) + "\n").encode())
