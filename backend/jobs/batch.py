"""The batch engine: one Databento batch job per group, paid once, into the very same files.

    submit (or resume the recorded job) -> wait, visibly -> list its files -> download each data
    file (Range resume, sha256 checked) -> check and split it like a streamed chunk -> merge,
    publish and record like the stream engine, with the job in the manifest

A job's files wait in the data dir until every product built from them is published:

    {data_dir}/raw/databento/.batch/{JOB_ID}/FILE.partial   downloading (resumed with Range)
    {data_dir}/raw/databento/.batch/{JOB_ID}/FILE           complete, its sha256 checked
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from backend.jobs.batchjob import JobFile, JobRecord, JobRequest, read_record, write_record
from backend.jobs.cache import (
    LOCKS_SUBDIR,
    RAW_SUBDIR,
    ScratchFiles,
    YearFolder,
    make_working_dir,
    publish,
)
from backend.jobs.chunks import GrowingFile, Part, part_path, stream_and_check
from backend.jobs.client import RangeRequest
from backend.jobs.dbnfile import HashingReader, PartFile, request_mismatch, scan
from backend.jobs.engines import split_duration
from backend.jobs.errors import (
    CancelledError,
    CorruptFileError,
    IngestError,
    JobGoneError,
    TransientError,
)
from backend.jobs.manifest import BatchRecord, JobFileRecord, Manifest
from backend.jobs.merge import MergedWriter
from backend.jobs.plan import TimeRange, split_range
from backend.jobs.preflight import GroupPlan, ProductPlan
from backend.jobs.progress import Progress
from backend.jobs.request import IngestRequest, ProductResult
from backend.jobs.retry import RetryPolicy, retrying
from backend.jobs.threads import run_concurrently

if TYPE_CHECKING:
    from databento_dbn import Metadata

BATCH_SUBDIR = ".batch"
PARTIAL_SUFFIX = ".partial"
POLL_FIRST_S, POLL_MAX_S, POLL_GROWTH = 1.0, 30.0, 1.5
RESUME_CHECKS_AT_ONCE = 4


class BatchClient(Protocol):
    def submit_job(self, job: JobRequest, what: str) -> dict[str, Any]: ...
    def job_details(self, job_id: str) -> dict[str, Any]: ...
    def jobs_since(self, since: str) -> list[dict[str, Any]]: ...
    def job_files(self, job_id: str) -> list[JobFile]: ...
    def download_file(self, file: JobFile, path: Path, job_id: str) -> None: ...


def describe(job: JobRequest, year: int) -> str:
    """`AAPL 2023 trades` or `trades of 50 symbols 2023`, for messages."""
    if len(job.symbols) == 1:
        return f"{job.symbols[0]} {year} {job.schema}"
    return f"{job.schema} of {len(job.symbols)} symbols {year}"


# Planning: which products a job recorded earlier still answers


def recorded_job(member: ProductPlan) -> JobRecord | None:
    """The job a product's working folder records, else the one its manifest entry names."""
    record = read_record(member.folder.storage, member.folder.job_key(member.product.name))
    if record is not None:
        return record
    entry = Manifest.of(member.folder).load().entries.get(member.product.name)
    if entry is None or entry.batch is None:
        return None
    job = JobRequest(
        dataset=entry.request.dataset,
        symbols=entry.batch.symbols,
        schema=entry.request.schema,
        span=entry.request.span,
        split_duration=entry.batch.split_duration,
    )
    return JobRecord(job, entry.batch.job_id, entry.batch.cost_usd)


def resume_recorded_jobs(
    client: BatchClient,
    dataset: str,
    members: list[ProductPlan],
    *,
    dry_run: bool,
) -> tuple[list[GroupPlan], list[ProductPlan]]:
    """(groups fetched from jobs already paid, members left to plan as new work)."""
    candidates: dict[object, tuple[JobRecord, list[ProductPlan]]] = {}
    rest = []
    for member in members:
        record = recorded_job(member)
        if record is None:
            rest.append(member)
            continue
        if not record.request.covers(member.symbol, dataset, member.product.schema, member.span):
            logger.warning(
                "{} {} {}: the recorded batch job {} asked for another range ({}); not used",
                *(member.symbol, member.year, member.product.name, record.job_id or "(unsent)"),
                record.request.span,
            )
            rest.append(member)
            continue
        key = record.job_id or record.request
        candidates.setdefault(key, (record, []))[1].append(member)
    if not candidates:
        return [], rest
    checks = run_concurrently(
        [lambda record=record: live_job(client, record) for record, _ in candidates.values()],
        "batch-check",
        limit=RESUME_CHECKS_AT_ONCE,
    )
    resumed = []
    for (record, claimed), live in zip(candidates.values(), checks, strict=True):
        if live is None:
            if record.job_id and not dry_run:  # its files can never be used again
                job_files = claimed[0].folder.data_dir / RAW_SUBDIR / BATCH_SUBDIR / record.job_id
                shutil.rmtree(job_files, ignore_errors=True)
            rest.extend(claimed)
            continue
        found, details = live
        if not dry_run:
            for member in claimed:
                record_job(member, found)
        first = claimed[0]
        resumed.append(
            GroupPlan(
                number=0,
                product=first.product,
                span=first.span,
                members=claimed,
                chunks=split_range(first.span, found.request.split_duration),  # type: ignore[arg-type]
                estimated_bytes=int(details.get("billed_size") or 0),
                estimated_usd=0.0,
                engine="batch",
                why=f"job {found.job_id} already paid; {details.get('state')}",
                job=found,
            )
        )
    return resumed, rest


def record_job(member: ProductPlan, record: JobRecord) -> None:
    """Write the job a product is fetched from where any later run (or machine) looks."""
    member.folder.make_parts(member.product.name)
    write_record(member.folder.storage, member.folder.job_key(member.product.name), record)


def live_job(client: BatchClient, record: JobRecord) -> tuple[JobRecord, dict[str, Any]] | None:
    """The recorded job and its details if Databento still serves it; None: a new job is needed."""
    year = int(record.request.span.start[:4])
    what = describe(record.request, year)
    if record.job_id is None:
        found = find_submitted(client, record)
        if found is None:
            logger.info("{}: the batch job being submitted last run was never created", what)
            return None
        record = record.submitted(str(found["id"]), found.get("cost_usd"))
        logger.info("{}: found batch job {} submitted by the last run", what, record.job_id)
    job_id = str(record.job_id)
    try:
        details = client.job_details(job_id)
    except JobGoneError:
        logger.warning(
            "{}: batch job {} is unknown to Databento now: a new job is needed, billed again "
            "(within --max-cost)",
            what,
            job_id,
        )
        return None
    if details.get("state") == "expired":
        logger.warning(
            "{}: batch job {} expired ({}): its files are kept 30 days after submit; a new job "
            "is needed, billed again (within --max-cost)",
            *(what, job_id, details.get("ts_expiration") or "expiry date unknown"),
        )
        return None
    return record, details


def find_submitted(client: BatchClient, record: JobRecord) -> dict[str, Any] | None:
    """A job the service created for this record's request, if a submit's answer was lost."""
    for listed in reversed(client.jobs_since(record.look_since)):
        details = client.job_details(str(listed["id"]))
        if record.request.answered_by(details):
            return details
    return None


# The engine


@dataclass
class JobRun:
    """One group's job in this run: its record, then its files as they are fetched."""

    group: GroupPlan
    record: JobRecord
    folder: Path
    state: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # as last polled
    files: list[JobFile] = field(default_factory=list)
    parts: dict[str, list[Part]] = field(default_factory=dict)  # symbol -> parts
    records: int | None = 0  # records in the job's data files (None: not all were counted)
    pending: int = 0  # data files not yet checked
    # symbol -> its final file, merged as the files land when they are the expected periods
    writers: dict[str, MergedWriter] = field(default_factory=dict)
    as_expected: bool = True
    next_poll: float = 0.0
    interval: float = POLL_FIRST_S

    @property
    def job_id(self) -> str:
        return str(self.record.job_id)

    @property
    def what(self) -> str:
        return describe(self.record.request, self.group.members[0].year)


class BatchEngine:
    """Submits (or resumes) one job per batch group, then downloads and publishes them all.

    `submit` runs before the stream engine so jobs are processed server-side meanwhile;
    `collect` waits for them and yields each product as it is published.
    """

    def __init__(
        self,
        request: IngestRequest,
        client: BatchClient,
        *,
        data_dir: Path,
        policy: RetryPolicy,
        stop: threading.Event,
        progress: Progress,
        timeout_s: float,
    ) -> None:
        self.request = request
        self.client = client
        self.data_dir = data_dir
        self.root = data_dir / RAW_SUBDIR
        self.policy = policy
        self.stop = stop
        self.progress = progress
        self.timeout_s = timeout_s
        self.runs: list[JobRun] = []
        self.locks = contextlib.ExitStack()
        self.scratch = ScratchFiles()

    def close(self) -> None:
        self.scratch.remove_all()
        self.locks.close()

    def submit(self, groups: list[GroupPlan]) -> None:
        """Every group's job exists and is recorded in its members' working folders."""
        for group in groups:
            if group.job is None:
                record = self._submit(group)
            else:
                record = group.job
                what = describe(record.request, group.members[0].year)
                logger.info(
                    "resuming batch job {} for {} ({}): no new charge",
                    record.job_id,
                    what,
                    group.why,
                )
            folder = self._job_folder(str(record.job_id))
            self.runs.append(JobRun(group, record, folder))

    def _submit(self, group: GroupPlan) -> JobRecord:
        job = JobRequest(
            dataset=self.request.dataset,
            symbols=group.symbols,
            schema=group.product.schema,
            span=group.span,
            split_duration=split_duration(self.request.chunking),
        )
        record = JobRecord.submitting(job)
        self._record(group, record)  # before the submit: a lost answer is looked up next run
        what = describe(job, group.members[0].year)
        sent = False

        def attempt() -> dict[str, Any]:
            nonlocal sent
            if sent:  # the last attempt may have created the job before it failed
                found = find_submitted(self.client, record)
                if found is not None:
                    return found
            sent = True
            return self.client.submit_job(job, what)

        answer = retrying(
            attempt, policy=self.policy, stop=self.stop, label=f"submit of the batch job for {what}"
        )
        record = record.submitted(str(answer["id"]), answer.get("cost_usd"))
        self._record(group, record)
        logger.info(
            "submitted batch job {} for {} ({}; {}): billed once, free to download again for "
            "30 days",
            *(record.job_id, what, group.why, _cost(record.cost_usd)),
        )
        return record

    @staticmethod
    def _record(group: GroupPlan, record: JobRecord) -> None:
        for member in group.members:
            record_job(member, record)

    def _job_folder(self, job_id: str) -> Path:
        """The job's download folder, held under a lock: two runs never write one file."""
        from filelock import FileLock, Timeout

        locks = make_working_dir(self.root, Path(LOCKS_SUBDIR) / BATCH_SUBDIR)
        lock = FileLock(locks / f"{job_id}.lock")
        try:
            self.locks.enter_context(lock.acquire(timeout=self.request.lock_timeout_s))
        except Timeout:
            raise IngestError(
                f"another run still downloads batch job {job_id} after "
                f"{self.request.lock_timeout_s:.0f}s: wait for it or raise --lock-timeout"
            ) from None
        return make_working_dir(self.root, Path(BATCH_SUBDIR) / job_id)

    def collect(self, started: float) -> Iterator[ProductResult]:
        """Wait for the jobs, fetch their files on one bounded pool, publish each product."""
        try:
            yield from self._collect(started)
        except JobGoneError as exc:
            raise IngestError(
                f"{exc}: the job expired or is unknown to Databento now; run the same command "
                "again to submit a new one (billed, within --max-cost)"
            ) from None

    def _collect(self, started: float) -> Iterator[ProductResult]:
        scratch = self.scratch
        waiting = list(self.runs)
        deadline = time.monotonic() + self.timeout_s
        pool = ThreadPoolExecutor(max_workers=self.request.jobs, thread_name_prefix="batch")
        fetching: dict[Future[tuple[int | None, dict[str, Part]]], JobRun] = {}
        try:
            while waiting or fetching:
                for run in [run for run in waiting if run.next_poll <= time.monotonic()]:
                    if self._poll(run):
                        waiting.remove(run)
                        self._start_files(run, pool, fetching, scratch)
                self._check_deadline(waiting, deadline)
                next_poll = min((run.next_poll for run in waiting), default=None)
                timeout = None if next_poll is None else max(0.0, next_poll - time.monotonic())
                done = self._next_finished(fetching, timeout)
                for future in done:
                    run = fetching.pop(future)
                    records, parts = future.result()
                    counted = records is not None and run.records is not None
                    run.records = run.records + records if counted else None  # type: ignore[operator]
                    for member in run.group.members:
                        part = parts[member.symbol]
                        run.parts.setdefault(member.symbol, []).append(part)
                        self.progress.advance(member.product.name, part.summary.bytes)
                        writer = run.writers[member.symbol]
                        run.as_expected = run.as_expected and writer.expects(part.request.span)
                        if run.as_expected:
                            writer.add(part)
                    run.pending -= 1
                    if run.pending == 0:
                        yield from self._finish(run, scratch, started)
        except BaseException:
            self.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=False)
            for run in self.runs:
                for writer in run.writers.values():
                    writer.discard()

    def _next_finished(self, fetching: dict[Future[Any], JobRun], timeout: float | None) -> set:
        """Files finished within `timeout` (None: wait for one); a stopped run raises."""
        if fetching:
            done, _ = wait(fetching, timeout=timeout, return_when=FIRST_COMPLETED)
            return done
        if self.stop.wait(timeout or 0):
            raise CancelledError("waiting for batch jobs: cancelled")
        return set()

    def _poll(self, run: JobRun) -> bool:
        """Ask for the job's state (logged when it changes); True once it is done."""
        details = run.details = self.client.job_details(run.job_id)
        state = str(details.get("state"))
        if state != run.state:
            run.state = state
            logger.info("batch job {} ({}): {}", run.job_id, run.what, state)
        if state == "done":
            self.progress.waiting(f"job {run.job_id}", state, 100)
            return True
        if state == "expired":
            raise IngestError(
                f"batch job {run.job_id} ({run.what}) expired while this run waited: run the same "
                "command again to submit a new one (billed, within --max-cost)"
            )
        percent = details.get("progress")
        self.progress.waiting(
            f"job {run.job_id}", state, int(percent) if isinstance(percent, int | float) else None
        )
        run.next_poll = time.monotonic() + run.interval
        run.interval = min(POLL_MAX_S, run.interval * POLL_GROWTH)
        return False

    def _check_deadline(self, waiting: list[JobRun], deadline: float) -> None:
        if not waiting or time.monotonic() <= deadline:
            return
        jobs = ", ".join(f"{run.job_id} ({run.what}: {run.state})" for run in waiting)
        raise IngestError(
            f"batch jobs still unfinished after {self.timeout_s:.0f}s (--batch-timeout): {jobs}; "
            "they stay recorded: run the same command again later to pick them up (no new charge)"
        )

    def _start_files(
        self,
        run: JobRun,
        pool: ThreadPoolExecutor,
        fetching: dict[Future[tuple[int | None, dict[str, Part]]], JobRun],
        scratch: ScratchFiles,
    ) -> None:
        run.files = self.client.job_files(run.job_id)
        data = [file for file in run.files if file.is_data]
        if not data:
            raise IngestError(f"batch job {run.job_id} ({run.what}) lists no data file")
        run.pending = len(data)
        for member in run.group.members:
            self.progress.start(
                member.product.name, member.folder.parts(member.product.name), len(data)
            )
            run.writers[member.symbol] = self._writer(member, run.group.chunks, scratch)
        for file in data:
            future = pool.submit(self._fetch_file, run, file, scratch)
            fetching[future] = run

    def _fetch_file(
        self, run: JobRun, file: JobFile, scratch: ScratchFiles
    ) -> tuple[int | None, dict[str, Part]]:
        """One data file: downloaded (or found complete), sha256 checked, split into parts."""
        complete = run.folder / file.filename
        partial = complete.with_name(file.filename + PARTIAL_SUFFIX)
        label = f"batch job {run.job_id} file {file.filename}"

        def attempt() -> tuple[int | None, dict[str, Part]]:
            source = complete if complete.exists() else partial
            if source is partial:
                if partial.exists() and partial.stat().st_size:
                    logger.info("{}: resuming at byte {:,}", label, partial.stat().st_size)
                fetch = lambda: self.client.download_file(file, partial, run.job_id)  # noqa: E731
            else:
                fetch = lambda: None  # noqa: E731
            try:
                hashed, (records, parts) = stream_and_check(
                    fetch,
                    source,
                    lambda growing: self._split(run, growing, scratch),
                    stop=self.stop,
                )
            except CorruptFileError:
                source.unlink(missing_ok=True)  # bad bytes: fetch it whole again (free)
                raise
            if hashed.hexdigest() != file.sha256:
                source.unlink(missing_ok=True)
                for part in parts.values():
                    part.path.unlink(missing_ok=True)
                raise CorruptFileError(
                    f"{label}: its sha256 differs from the job's file list; downloading it again"
                )
            if source is partial:
                partial.replace(complete)
            return records, parts

        return retrying(
            attempt,
            policy=self.policy,
            stop=self.stop,
            label=label,
            retry_on=(TransientError, CorruptFileError),
        )

    def _split(
        self, run: JobRun, growing: GrowingFile, scratch: ScratchFiles
    ) -> tuple[Any, tuple[int | None, dict[str, Part]]]:
        """Check a job file as it arrives (hashing it) and cut it into the members' parts."""
        from backend.jobs.split import split_by_symbol

        job = run.record.request
        group = run.group
        source = HashingReader(growing)
        record_size = group.product.record_size
        first = group.members[0]
        whole = RangeRequest(job.dataset, job.symbols, job.schema, job.span)
        if len(job.symbols) == 1:
            temp = scratch.new(first.folder.parts(group.product.name) / "file.dbn.zst")
            try:
                summary = scan(source, record_size, recode_to=temp)
                span = file_span(summary.metadata, whole.span, growing.name)
                wrong = request_mismatch(summary.metadata, replace(whole, span=span))
                if wrong:
                    raise CorruptFileError(f"{growing.name} does not match its batch job: {wrong}")
                final = part_path(first.folder.parts(group.product.name), span)
                publish(temp, final, durable=False)
            finally:
                scratch.discard(temp)
            alone = RangeRequest(job.dataset, job.symbols, job.schema, span)
            layout = PartFile.written(final, summary.metadata_bytes)
            part = Part(alone, final, summary, downloaded=True, layout=layout)
            return source.sha256, (summary.records, {first.symbol: part})
        workdir = scratch.new_dir(first.folder.parts(group.product.name) / "split")
        temps = {
            member.symbol: scratch.new(member.folder.parts(group.product.name) / "file.dbn.zst")
            for member in group.members
        }
        try:
            summaries = split_by_symbol(
                source, whole, record_size, temps, workdir, span_from_file=True
            )
            # the file's header was checked against the job by the split; its range is each part's
            span = file_span(next(iter(summaries.values())).metadata, whole.span, growing.name)
            parts = {}
            for member in group.members:
                summary = summaries[member.symbol]
                final = part_path(member.folder.parts(group.product.name), span)
                publish(temps[member.symbol], final, durable=False)
                alone = RangeRequest(job.dataset, (member.symbol,), job.schema, span)
                layout = PartFile.written(final, summary.metadata_bytes)
                parts[member.symbol] = Part(alone, final, summary, downloaded=True, layout=layout)
            records = sum(summary.records for summary in summaries.values())
            complete = len(summaries) == len(job.symbols)
            return source.sha256, (records if complete else None, parts)
        finally:
            scratch.discard(workdir)
            for temp in temps.values():
                scratch.discard(temp)

    def _finish(
        self, run: JobRun, scratch: ScratchFiles, started: float
    ) -> Iterator[ProductResult]:
        """Every file checked: each member's parts must tile its range; merge and publish."""
        from backend.jobs.download import finish_product

        expected = run.details.get("record_count")
        if run.records is not None and isinstance(expected, int) and expected != run.records:
            raise IngestError(
                f"batch job {run.job_id} ({run.what}): its files hold {run.records:,} records, "
                f"the job reports {expected:,}; run again to download it once more (free)"
            )
        batch = BatchRecord(
            job_id=run.job_id,
            cost_usd=run.record.cost_usd,
            symbols=run.record.request.symbols,
            split_duration=run.record.request.split_duration,
            files=tuple(JobFileRecord(f.filename, f.size, f.sha256) for f in run.files),
        )
        for member in run.group.members:
            parts = sorted(run.parts[member.symbol], key=lambda part: part.request.span)
            spans = [part.request.span for part in parts]
            if not tiles(spans, member.span):
                raise IngestError(
                    f"batch job {run.job_id}: the files of {member.symbol} do not cover "
                    f"{member.span} exactly ({len(spans)} files)"
                )
            writer = run.writers[member.symbol]
            if not run.as_expected:  # files of other periods than expected: merged now
                writer.discard()
                writer = run.writers[member.symbol] = self._writer(member, spans, scratch)
                for part in parts:
                    writer.add(part)
            try:
                result = finish_product(
                    self.request, member=member, writer=writer, started=started, batch=batch
                )
            finally:
                writer.discard()
            member.folder.storage.delete(member.folder.job_key(member.product.name))
            self.progress.finish(member.product.name)
            yield result
        self._drop_job_files(run)

    def _writer(
        self, member: ProductPlan, chunks: list[TimeRange], scratch: ScratchFiles
    ) -> MergedWriter:
        """The member's final file, made of `chunks` (the job's files, in time order)."""
        name = member.product.name
        whole = RangeRequest(
            self.request.dataset, (member.symbol,), member.product.schema, member.span
        )
        return MergedWriter(
            member.folder.final(name),
            whole,
            chunks,
            member.header,
            scratch,
            destination=(member.folder.storage, member.folder.final_key(name)),
        )

    def _drop_job_files(self, run: JobRun) -> None:
        """Remove the job's downloads unless another symbol-year still counts on them."""
        job = run.record.request
        year, name = run.group.members[0].year, run.group.product.name
        for symbol in job.symbols:
            folder = YearFolder(self.data_dir, symbol, year, job.dataset)
            other = read_record(run.group.members[0].folder.storage, folder.job_key(name))
            if other is not None and other.job_id == run.job_id:
                return
        shutil.rmtree(run.folder, ignore_errors=True)


def file_span(metadata: Metadata, job_span: TimeRange, name: str) -> TimeRange:
    """The range a job file answers, from its own header; it must lie inside the job's."""
    span = TimeRange(metadata.start, metadata.end or 0)
    if not job_span.start_ns <= span.start_ns < span.end_ns <= job_span.end_ns:
        raise CorruptFileError(f"{name} covers {span}, outside its job's range {job_span}")
    return span


def tiles(spans: list[TimeRange], whole: TimeRange) -> bool:
    """Pure: sorted ranges that cover `whole` end to end, without gap or overlap."""
    cursor = whole.start_ns
    for span in spans:
        if span.start_ns != cursor:
            return False
        cursor = span.end_ns
    return cursor == whole.end_ns


def _cost(cost_usd: float | None) -> str:
    from backend.jobs.preflight import usd

    return "cost not reported" if cost_usd is None else usd(float(cost_usd))
