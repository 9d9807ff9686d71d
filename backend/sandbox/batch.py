"""Batch jobs: their states over time, their job objects and their files, made once, lazily."""

from __future__ import annotations

import secrets
import shutil
import string
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.sandbox.batchfiles import (
    BatchFile,
    BatchRequest,
    JobFiles,
    JobSource,
    write_job_files,
    write_zip,
)
from backend.sandbox.timestamps import format_iso_ns, ns_to_date

USER_ID = "SANDBOX1"
JOB_STATES = ("received", "queued", "processing", "done", "expired")
_STAGES = JOB_STATES[:4]
_DONE = _STAGES.index("done")
_PROCESSING = _STAGES.index("processing")
_JOB_ID_ALPHABET = string.ascii_uppercase + string.digits


def new_job_id(dataset: str, received_ns: int) -> str:
    """`XNAS-20231129-5KM3HL5BUW`: dataset prefix, submission date, 10 random characters."""
    suffix = "".join(secrets.choice(_JOB_ID_ALPHABET) for _ in range(10))
    prefix = dataset.partition(".")[0]
    return f"{prefix}-{ns_to_date(received_ns):%Y%m%d}-{suffix}"


@dataclass(frozen=True)
class Timeline:
    """When a job reaches each stage: received, then queued after 10% of its processing time,
    processing after 20%, done at 100%; it expires `expiry_ns` after it is done."""

    received_ns: int
    processing_ns: int
    expiry_ns: int

    def stage_times(self) -> tuple[int, int, int, int]:
        """The instants of received, queued, processing and done."""
        received, processing = self.received_ns, self.processing_ns
        return received, received + processing // 10, received + processing // 5, self.done_ns

    @property
    def done_ns(self) -> int:
        return self.received_ns + self.processing_ns

    def stage_at(self, moment_ns: int) -> int:
        """The index in received..done of the last stage reached at `moment_ns`."""
        return max(i for i, at in enumerate(self.stage_times()) if at <= moment_ns or i == 0)

    def progress_at(self, moment_ns: int) -> int:
        """0 until processing starts, then proportional to the processing time, 100 when done."""
        stage = self.stage_at(moment_ns)
        if stage < _PROCESSING:
            return 0
        if stage == _DONE:
            return 100
        started = self.stage_times()[_PROCESSING]
        return (moment_ns - started) * 100 // (self.done_ns - started)


class BatchJob:
    """One submitted job: what it asked for, when it gets done, and its files once made."""

    def __init__(
        self,
        *,
        job_id: str,
        request: BatchRequest,
        source: JobSource,
        timeline: Timeline,
        record_count: int,
        record_size: int,
        cost_usd: float,
        directory: Path,
    ) -> None:
        self.id = job_id
        self.request = request
        self.timeline = timeline
        self._source = source
        self._record_count = record_count
        self._record_size = record_size
        self._cost_usd = cost_usd
        self._directory = directory
        self._expired_at_ns: int | None = None
        self._files: JobFiles | None = None
        self._zip_path: Path | None = None
        # Files are made once, by the first request that needs them; the others wait.
        self._lock = threading.Lock()

    @property
    def user_id(self) -> str:
        return USER_ID

    def expiration_ns(self) -> int:
        natural = self.timeline.done_ns + self.timeline.expiry_ns
        return natural if self._expired_at_ns is None else min(natural, self._expired_at_ns)

    def expire(self, now_ns: int) -> None:
        """Expire now (a test control), unless it expired already."""
        self._expired_at_ns = min(now_ns, self.expiration_ns())

    def state_at(self, now_ns: int) -> str:
        if now_ns >= self.expiration_ns():
            return "expired"
        return _STAGES[self.timeline.stage_at(now_ns)]

    def details(self, now_ns: int) -> dict[str, Any]:
        """The job object as get_job_details answers it at `now_ns`."""
        # An expired job shows the stages it had reached when it expired.
        seen_ns = min(now_ns, self.expiration_ns())
        stage = self.timeline.stage_at(seen_ns)
        expired = now_ns >= self.expiration_ns()
        return self._job_object(
            state="expired" if expired else _STAGES[stage],
            stage=stage,
            expiration=expired or stage == _DONE,
            progress=self.timeline.progress_at(seen_ns),
        )

    def submitted_details(self) -> dict[str, Any]:
        """The job object as submit_job answers it: just received, whatever comes next."""
        return self._job_object(state="received", stage=0, expiration=False, progress=0)

    def short_details(self, now_ns: int) -> dict[str, Any]:
        """list_jobs' short form."""
        return {
            "id": self.id,
            "state": self.state_at(now_ns),
            "ts_received": format_iso_ns(self.timeline.received_ns),
        }

    def files(self) -> JobFiles:
        """The job's files, written on the first call (call it only once the job is done)."""
        with self._lock:
            if self._files is None:
                self._files = write_job_files(self._directory, self.id, self.request, self._source)
            return self._files

    def file_named(self, filename: str) -> BatchFile | None:
        return next((f for f in self.files().all if f.filename == filename), None)

    def zip_path(self) -> Path:
        """The whole job as one zip archive, written on the first call."""
        files = self.files()
        with self._lock:
            if self._zip_path is None:
                path = self._directory / f"{self.id}.zip"
                write_zip(path, files.all)
                self._zip_path = path
            return self._zip_path

    def discard_files(self) -> None:
        with self._lock:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._files = self._zip_path = None

    def _job_object(
        self, *, state: str, stage: int, expiration: bool, progress: int
    ) -> dict[str, Any]:
        _, queued, processing, done = (
            format_iso_ns(at) if i <= stage else None
            for i, at in enumerate(self.timeline.stage_times())
        )
        files = self._files
        return {
            "id": self.id,
            "user_id": self.user_id,
            "cost_usd": self._cost_usd,
            **self.request.query_fields(),
            **self.request.delivery_fields(),
            "state": state,
            "ts_received": format_iso_ns(self.timeline.received_ns),
            "ts_queued": queued,
            "ts_process_start": processing,
            "ts_process_done": done,
            "ts_expiration": format_iso_ns(self.expiration_ns()) if expiration else None,
            "record_count": self._record_count,
            "billed_size": self._record_count * self._record_size,
            "actual_size": sum(f.size for f in files.data) if files is not None else None,
            "package_size": None,
            "progress": progress,
        }


class BatchBook:
    """The submitted jobs by id (thread-safe)."""

    def __init__(self) -> None:
        self._jobs: dict[str, BatchJob] = {}
        self._lock = threading.Lock()

    def add(self, job: BatchJob) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def get(self, job_id: str) -> BatchJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def remove(self, job_id: str) -> BatchJob | None:
        with self._lock:
            return self._jobs.pop(job_id, None)

    def jobs(self) -> list[BatchJob]:
        """Every job, oldest submission first."""
        with self._lock:
            jobs = list(self._jobs.values())
        return sorted(jobs, key=lambda job: job.timeline.received_ns)

    def clear(self) -> None:
        """Forget every job and delete its files."""
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.discard_files()
