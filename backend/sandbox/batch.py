"""Batch jobs: their states over time, their job objects and their files, written once."""

from __future__ import annotations

import logging
import secrets
import shutil
import string
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from backend.sandbox.batchfiles import (
    BatchFile,
    BatchRequest,
    JobFiles,
    JobFilesCancelledError,
    JobSource,
    write_job_files,
    write_zip,
)
from backend.sandbox.timestamps import format_iso_ns, ns_to_date

logger = logging.getLogger("backend.sandbox")

USER_ID = "SANDBOX1"
JOB_STATES = ("received", "queued", "processing", "done", "expired")
# How a job object shows its symbols: "string", comma-joined as Databento documents it
# (`"symbols": "ZC.FUT,ES.FUT"`), or "array", as the official C++ and Rust clients also accept.
SYMBOLS_SHAPES = ("string", "array")
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
    processing after 20%, done once its processing time has passed and its files are written
    (`files_ready_ns`; None: still being written); it expires `expiry_ns` after it is done."""

    received_ns: int
    processing_ns: int
    expiry_ns: int
    files_ready_ns: int | None = None

    def stage_times(self) -> tuple[int, int, int, int | None]:
        """The instants of received, queued, processing and done (None: not known yet)."""
        received, processing = self.received_ns, self.processing_ns
        return received, received + processing // 10, received + processing // 5, self.done_ns

    @property
    def planned_done_ns(self) -> int:
        """The end of the processing time: done then, if the files are written by then."""
        return self.received_ns + self.processing_ns

    @property
    def done_ns(self) -> int | None:
        if self.files_ready_ns is None:
            return None
        return max(self.planned_done_ns, self.files_ready_ns)

    def stage_at(self, moment_ns: int) -> int:
        """The index in received..done of the last stage reached at `moment_ns`."""
        return max(
            i
            for i, at in enumerate(self.stage_times())
            if (at is not None and at <= moment_ns) or i == 0
        )

    def progress_at(self, moment_ns: int) -> int:
        """0 until processing starts, then proportional to the processing time (99 at most
        while the files are still being written), 100 when done."""
        stage = self.stage_at(moment_ns)
        if stage < _PROCESSING:
            return 0
        if stage == _DONE:
            return 100
        started = self.stage_times()[_PROCESSING]
        span = self.planned_done_ns - started
        if span <= 0:
            return 99
        return min(99, (moment_ns - started) * 100 // span)


class BatchJob:
    """One submitted job: what it asked for, when it gets done, and its files.

    `start_writing` writes the files from the job's submission on: on a background thread, or
    before returning (then they count as written at the submission). The job is done once
    its processing time has passed and its files are written, so a done job lists its files
    at once.
    """

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
        symbols_shape: str = "string",
    ) -> None:
        if symbols_shape not in SYMBOLS_SHAPES:
            raise ValueError(
                f"symbols_shape must be one of {SYMBOLS_SHAPES}, got {symbols_shape!r}"
            )
        self.id = job_id
        self.symbols_shape = symbols_shape
        self.request = request
        self._planned = timeline
        self._source = source
        self._record_count = record_count
        self._record_size = record_size
        self._cost_usd = cost_usd
        self._directory = directory
        self._expired_at_ns: int | None = None
        self._files: JobFiles | None = None
        self._files_ready_ns: int | None = timeline.files_ready_ns
        self._zip_path: Path | None = None
        self._writer: threading.Thread | None = None
        self._cancel = threading.Event()
        # Files are made once; a request that needs them before they are made waits.
        self._lock = threading.Lock()

    @property
    def user_id(self) -> str:
        return USER_ID

    @property
    def timeline(self) -> Timeline:
        """The job's timeline as of now (its done instant is known once its files are)."""
        return replace(self._planned, files_ready_ns=self._files_ready_ns)

    def start_writing(self, *, background: bool) -> None:
        """Write the job's files now: on a background thread, or before returning (then the
        files count as ready at the submission, so a job without processing time is done at
        once)."""
        if not background:
            self.files()
            self._files_ready_ns = self._planned.received_ns
            return
        self._writer = threading.Thread(
            target=self._write_in_background, name=f"sandbox-batch-{self.id}", daemon=True
        )
        self._writer.start()

    def _write_in_background(self) -> None:
        try:
            files = self._write_files()
        except JobFilesCancelledError:
            return
        except Exception:
            # Marked ready all the same: the first request that needs the files writes them
            # again and answers the error.
            logger.exception("sandbox batch job %s: writing its files failed", self.id)
            files = None
        with self._lock:
            if files is not None and self._files is None:
                self._files = files
        self._files_ready_ns = time.time_ns()

    def _write_files(self) -> JobFiles:
        return write_job_files(
            self._directory, self.id, self.request, self._source, cancelled=self._cancel
        )

    def expiration_ns(self) -> int | None:
        """When the job expires (None: not done, so not expiring yet, unless expired by hand)."""
        done = self.timeline.done_ns
        natural = None if done is None else done + self._planned.expiry_ns
        if self._expired_at_ns is None:
            return natural
        return self._expired_at_ns if natural is None else min(natural, self._expired_at_ns)

    def expire(self, now_ns: int) -> None:
        """Expire now (a test control), unless it expired already."""
        current = self.expiration_ns()
        self._expired_at_ns = now_ns if current is None else min(now_ns, current)

    def _expired(self, now_ns: int) -> bool:
        expiration = self.expiration_ns()
        return expiration is not None and now_ns >= expiration

    def state_at(self, now_ns: int) -> str:
        if self._expired(now_ns):
            return "expired"
        return _STAGES[self.timeline.stage_at(now_ns)]

    def details(self, now_ns: int) -> dict[str, Any]:
        """The job object as get_job_details answers it at `now_ns`."""
        # An expired job shows the stages it had reached when it expired.
        expired = self._expired(now_ns)
        expiration = self.expiration_ns()
        seen_ns = min(now_ns, expiration) if expiration is not None else now_ns
        timeline = self.timeline
        stage = timeline.stage_at(seen_ns)
        return self._job_object(
            timeline,
            state="expired" if expired else _STAGES[stage],
            stage=stage,
            expiration=expired or stage == _DONE,
            progress=timeline.progress_at(seen_ns),
        )

    def submitted_details(self) -> dict[str, Any]:
        """The job object as submit_job answers it: just received, whatever comes next."""
        return self._job_object(
            self.timeline, state="received", stage=0, expiration=False, progress=0
        )

    def short_details(self, now_ns: int) -> dict[str, Any]:
        """list_jobs' short form."""
        return {
            "id": self.id,
            "state": self.state_at(now_ns),
            "ts_received": format_iso_ns(self._planned.received_ns),
        }

    def files(self) -> JobFiles:
        """The job's files (call it only once the job is done): those written since the
        submission, else written now, once."""
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join()
        with self._lock:
            if self._files is None:
                self._files = self._write_files()
            return self._files

    def written_files(self) -> JobFiles | None:
        """The job's files if they are written, without waiting or writing them."""
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
        """Stop writing the files (waiting for the writer to notice), then delete them."""
        self._cancel.set()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join()
        with self._lock:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._files = self._zip_path = None
        self._cancel = threading.Event()  # a later lazy write (files()) is not cancelled

    def _job_object(
        self, timeline: Timeline, *, state: str, stage: int, expiration: bool, progress: int
    ) -> dict[str, Any]:
        _, queued, processing, done = (
            format_iso_ns(at) if i <= stage and at is not None else None
            for i, at in enumerate(timeline.stage_times())
        )
        files = self._files if stage == _DONE else None
        expiration_ns = self.expiration_ns()
        return {
            "id": self.id,
            "user_id": self.user_id,
            "cost_usd": self._cost_usd,
            **self.request.query_fields(),
            "symbols": self._shown_symbols(),
            **self.request.delivery_fields(),
            "state": state,
            "ts_received": format_iso_ns(timeline.received_ns),
            "ts_queued": queued,
            "ts_process_start": processing,
            "ts_process_done": done,
            "ts_expiration": (
                format_iso_ns(expiration_ns) if expiration and expiration_ns is not None else None
            ),
            "record_count": self._record_count,
            "billed_size": self._record_count * self._record_size,
            "actual_size": sum(f.size for f in files.data) if files is not None else None,
            "package_size": None,
            "progress": progress,
        }

    def _shown_symbols(self) -> str | list[str]:
        symbols = list(self.request.symbols)
        return ",".join(symbols) if self.symbols_shape == "string" else symbols


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
