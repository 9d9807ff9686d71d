"""A group's batch job: submitted once (a lost answer looked up, never paid twice), recorded in
its members' working folders before and after the submit, its download folder held by one run.

A job's files wait in the work dir until every product built from them is published:

    {work_dir}/raw/databento/.batch/{JOB_ID}/FILE.partial   downloading (resumed with Range)
    {work_dir}/raw/databento/.batch/{JOB_ID}/FILE           complete, its sha256 checked
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from backend.jobs.cache.jobrecord import write_record
from backend.jobs.cache.layout import LOCKS_SUBDIR, RAW_SUBDIR, YearFolder
from backend.jobs.client.retry import retrying
from backend.jobs.core.files import make_working_dir
from backend.jobs.core.request import JobRecord, JobRequest
from backend.jobs.core.units import split_duration, usd
from backend.jobs.store.base import LockRequest
from backend.jobs.store.local import LocalStore

if TYPE_CHECKING:
    from backend.jobs.client.jobfiles import JobFile
    from backend.jobs.core.work import GroupPlan
    from backend.jobs.engines.parts import Part
    from backend.jobs.engines.runtime import BatchClient, Runtime

BATCH_SUBDIR = ".batch"
POLL_FIRST_S = 1.0


@dataclass(frozen=True)
class FileContent:
    """What one data file of a job holds, established by decoding it completely."""

    name: str
    records: int
    first_ts_recv: int | None
    last_ts_recv: int | None
    sha256: str = ""  # of the bytes as served


@dataclass
class JobRun:
    """One group's job in this run: its record, then its files as they are fetched."""

    group: GroupPlan
    record: JobRecord
    folder: Path  # where its files are downloaded
    state: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # as last polled
    files: list[JobFile] = field(default_factory=list)
    contents: list[FileContent] = field(default_factory=list)  # data files checked so far
    parts: dict[str, dict[str, Part]] = field(default_factory=dict)  # file -> symbol -> part
    pending: int = 0  # data files not yet checked
    next_poll: float = 0.0
    interval: float = POLL_FIRST_S

    @property
    def job_id(self) -> str:
        return str(self.record.job_id)

    @property
    def what(self) -> str:
        return describe(self.record.request, self.group.year)


def describe(job: JobRequest, year: int) -> str:
    """`AAPL 2023 trades` or `trades of 50 symbols 2023`, for messages."""
    if len(job.symbols) == 1:
        return f"{job.symbols[0]} {year} {job.schema}"
    return f"{job.schema} of {len(job.symbols)} symbols {year}"


def job_files_folder(work_dir: Path, job_id: str | None) -> Path:
    """Where a job's files are downloaded (and kept when they fail validation)."""
    return work_dir / RAW_SUBDIR / BATCH_SUBDIR / str(job_id)


def unusable_message(record: JobRecord, work_dir: Path, year: int) -> str:
    """One line for a job recorded as failed: which, why, where its files are, the way out."""
    return (
        f"batch job {record.job_id} ({describe(record.request, year)}) cannot be used: "
        f"{record.failed}; its files are kept for inspection in "
        f"{job_files_folder(work_dir, record.job_id)}; run again with --engine stream or "
        "--force to fetch it without this job (--force may submit a new batch job, billed "
        "within --max-cost)"
    )


def record_job(folder: YearFolder, product: str, record: JobRecord) -> None:
    """Write the job a product is fetched from where any later run (or machine) looks."""
    folder.make_parts(product)
    write_record(folder.store, folder.job_key(product), record)


def record_group(runtime: Runtime, group: GroupPlan, record: JobRecord) -> None:
    for member in group.members:
        record_job(runtime.folder(group.dataset, member), member.product.name, record)


def find_submitted(client: BatchClient, record: JobRecord) -> dict[str, Any] | None:
    """A job the service created for this record's request, if a submit's answer was lost."""
    for listed in reversed(client.jobs_since(record.look_since)):
        details = client.job_details(str(listed["id"]))
        if record.request.answered_by(details):
            return details
    return None


def submit_job(runtime: Runtime, group: GroupPlan) -> JobRecord:
    """The group's job, submitted (billed) once and recorded before and after the submit.

    Recorded first, so a lost answer is looked up by the next run; a retried submit first
    looks for the job the last attempt may have created before it failed.
    """
    job = JobRequest(
        dataset=group.dataset,
        symbols=group.symbols,
        schema=group.product.schema,
        span=group.span,
        split_duration=split_duration(runtime.config.chunking),
    )
    record = JobRecord.submitting(job)
    record_group(runtime, group, record)
    what = describe(job, group.year)
    sent = False

    def attempt() -> dict[str, Any]:
        nonlocal sent
        if sent:
            found = find_submitted(runtime.client, record)
            if found is not None:
                logger.info(
                    "{}: batch job {} was created though the submit's answer was lost; "
                    "not submitting again",
                    *(what, found["id"]),
                )
                return found
        sent = True
        return runtime.client.submit_job(job, what)

    label = f"submit of the batch job for {what}"
    answer = retrying(attempt, policy=runtime.policy, stop=runtime.stop, label=label)
    record = record.submitted(str(answer["id"]), answer.get("cost_usd"))
    record_group(runtime, group, record)
    cost = "cost not reported" if record.cost_usd is None else usd(float(record.cost_usd))
    logger.info(
        "submitted batch job {} for {} ({}; {}): billed once, free to download again for 30 days",
        *(record.job_id, what, group.why, cost),
    )
    return record


def hold_job_folder(runtime: Runtime, job_id: str, locks: contextlib.ExitStack) -> Path:
    """The job's download folder, held under a lock until `locks` closes: two runs never write
    one file."""
    lock_key = (RAW_SUBDIR / LOCKS_SUBDIR / BATCH_SUBDIR / f"{job_id}.lock").as_posix()
    work = LocalStore(runtime.config.work_dir)
    held = LockRequest(lock_key, f"the files of batch job {job_id}")
    locks.enter_context(work.locked([held], runtime.config.lock_timeout_s))
    return make_working_dir(runtime.config.work_dir / RAW_SUBDIR, Path(BATCH_SUBDIR) / job_id)
