"""The batch engine: one Databento batch job per group, paid once, into the very same files.

    submit (or resume the recorded job) -> wait, visibly -> list its files -> download each data
    file (Range resume, sha256 checked when listed) -> decode, check and split it -> validate
    the job's coverage by content -> merge, publish and record like the stream engine, with
    the job in the manifest

Databento documents neither whether a split period without records gets a (header-only) file
nor whether each file's header carries its own period or the whole job's range, and a file's
hash may be null. So nothing is read from file names or header ranges: the files are ordered
by their first record, every record must lie inside the job's range (and inside its file's
header range when that lies inside the job), files must not overlap, and their records must
add up to the job's `record_count`. The merged header is the preflight's, from the symbology
of the whole request, as one full-range get_range carries it.

A paid job whose files fail that validation is never stuck in a loop of re-runs: its record
is marked failed (the reason kept in batch-job.json) with its files left for inspection, and
every later run says so (exit 1) until it is run with --engine stream or --force.

A job's files wait in the data dir until every product built from them is published:

    {data_dir}/raw/databento/.batch/{JOB_ID}/FILE.partial   downloading (resumed with Range)
    {data_dir}/raw/databento/.batch/{JOB_ID}/FILE           complete, its sha256 checked
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from backend.jobs.cache.jobrecord import JobRecord, read_record, write_record
from backend.jobs.cache.layout import (
    LOCKS_SUBDIR,
    RAW_SUBDIR,
    ScratchFiles,
    YearFolder,
    make_working_dir,
    publish,
)
from backend.jobs.cache.manifest import BatchRecord, JobFileRecord, Manifest
from backend.jobs.cli.progress import Progress
from backend.jobs.client.jobfiles import JobFile
from backend.jobs.client.retry import RetryPolicy, retrying
from backend.jobs.core.concurrency import run_concurrently
from backend.jobs.core.dbn import (
    DbnReader,
    HashingReader,
    HeaderFields,
    PartFile,
    Readable,
    decompressed_chunks,
    scan,
    sha256_file,
)
from backend.jobs.core.ranges import STYPE_IN, STYPE_OUT, TimeRange, format_ns, split_range
from backend.jobs.core.request import IngestRequest, JobRequest, ProductResult, RangeRequest
from backend.jobs.core.units import split_duration
from backend.jobs.engines.merge import MergedWriter
from backend.jobs.engines.parts import GrowingFile, Part, empty_part, stream_and_check
from backend.jobs.errors import (
    CancelledError,
    CorruptFileError,
    IngestError,
    JobGoneError,
    TransientError,
)
from backend.jobs.plan.preflight import GroupPlan, ProductPlan

if TYPE_CHECKING:
    from databento_dbn import Metadata

BATCH_SUBDIR = ".batch"
PARTIAL_SUFFIX = ".partial"
POLL_FIRST_S, POLL_MAX_S, POLL_GROWTH = 1.0, 30.0, 1.5
RESUME_CHECKS_AT_ONCE = 4


class JobInvalidError(IngestError):
    """A job's files, as the service serves them, cannot make its products (not retried)."""


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
    skip_failed: bool = False,
) -> tuple[list[GroupPlan], list[ProductPlan]]:
    """(groups fetched from jobs already paid, members left to plan as new work).

    A job recorded as failed (its files failed validation) is never resumed: with
    `skip_failed` (--engine stream or --force) its members are planned as new work; otherwise
    the run stops with the reason (IngestError, exit 1), so a default re-run never pays for a
    new job unasked.
    """
    candidates: dict[object, tuple[JobRecord, list[ProductPlan]]] = {}
    rest = []
    skipped: set[str | None] = set()
    for member in members:
        record = recorded_job(member)
        if record is None:
            rest.append(member)
            continue
        if record.failed is not None:
            if not skip_failed:
                raise IngestError(unusable_message(record, member.folder.data_dir, member.year))
            if record.job_id not in skipped:
                skipped.add(record.job_id)
                logger.warning(
                    "batch job {} ({}) is recorded as unusable ({}): fetching it without this "
                    "job; its files stay in {}",
                    *(record.job_id, describe(record.request, member.year), record.failed),
                    job_files_folder(member.folder.data_dir, record.job_id),
                )
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
                job_files = job_files_folder(claimed[0].folder.data_dir, record.job_id)
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


def job_files_folder(data_dir: Path, job_id: str | None) -> Path:
    """Where a job's files are downloaded (and kept when they fail validation)."""
    return data_dir / RAW_SUBDIR / BATCH_SUBDIR / str(job_id)


def unusable_message(record: JobRecord, data_dir: Path, year: int) -> str:
    """One line for a job recorded as failed: which, why, where its files are, the way out."""
    return (
        f"batch job {record.job_id} ({describe(record.request, year)}) cannot be used: "
        f"{record.failed}; its files are kept for inspection in "
        f"{job_files_folder(data_dir, record.job_id)}; run again with --engine stream or "
        "--force to fetch it without this job (--force may submit a new batch job, billed "
        "within --max-cost)"
    )


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
    folder: Path
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
                    logger.info(
                        "{}: batch job {} was created though the submit's answer was lost; "
                        "not submitting again",
                        *(what, found["id"]),
                    )
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
        fetching: dict[Future[tuple[FileContent, dict[str, Part]]], JobRun] = {}
        try:
            while waiting or fetching:
                for run in [run for run in waiting if run.next_poll <= time.monotonic()]:
                    if self._poll(run):
                        waiting.remove(run)
                        with self._validating(run):
                            self._start_files(run, pool, fetching, scratch)
                        if run.pending == 0:  # no data file at all
                            yield from self._finish(run, scratch, started)
                self._check_deadline(waiting, deadline)
                next_poll = min((run.next_poll for run in waiting), default=None)
                timeout = None if next_poll is None else max(0.0, next_poll - time.monotonic())
                done = self._next_finished(fetching, timeout)
                for future in done:
                    run = fetching.pop(future)
                    with self._validating(run):
                        content, parts = future.result()
                    run.contents.append(content)
                    run.parts[content.name] = parts
                    for member in run.group.members:
                        self.progress.advance(
                            member.product.name, parts[member.symbol].summary.bytes
                        )
                    run.pending -= 1
                    if run.pending == 0:
                        yield from self._finish(run, scratch, started)
        except BaseException:
            self.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=False)

    @contextlib.contextmanager
    def _validating(self, run: JobRun) -> Iterator[None]:
        """A job whose files fail validation is recorded as failed, once, and ends the run."""
        try:
            yield
        except JobInvalidError as exc:
            record = run.record = run.record.failing(str(exc))
            self._record(run.group, record)
            for parts in run.parts.values():
                for part in parts.values():
                    part.path.unlink(missing_ok=True)
            year = run.group.members[0].year
            raise IngestError(unusable_message(record, self.data_dir, year)) from None

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
        fetching: dict[Future[tuple[FileContent, dict[str, Part]]], JobRun],
        scratch: ScratchFiles,
    ) -> None:
        run.files = self.client.job_files(run.job_id)
        data = [file for file in run.files if file.is_data]
        unreachable = [file.filename for file in data if not file.url]
        if unreachable:
            raise JobInvalidError(
                f"list_files gives no https URL for {len(unreachable)} of its data files "
                f"({unreachable[0]}, ...)"
            )
        run.pending = len(data)
        for member in run.group.members:
            self.progress.start(
                member.product.name, member.folder.parts(member.product.name), len(data)
            )
        for file in data:
            future = pool.submit(self._fetch_file, run, file, scratch)
            fetching[future] = run

    def _fetch_file(
        self, run: JobRun, file: JobFile, scratch: ScratchFiles
    ) -> tuple[FileContent, dict[str, Part]]:
        """One data file: downloaded (or found complete), decoded and checked, split into parts.

        Its sha256 is checked when list_files gives one. Bytes that fail the check are fetched
        again (free), unless they are the service's own: the listed sha256, or (no hash) the
        same bytes served twice; then the job's content itself is wrong (JobInvalidError).
        """
        complete = run.folder / file.filename
        partial = complete.with_name(file.filename + PARTIAL_SUFFIX)
        label = f"batch job {run.job_id} file {file.filename}"
        rejected: set[str] = set()  # sha256 of bytes served that failed the check

        def attempt() -> tuple[FileContent, dict[str, Part]]:
            source = complete if complete.exists() else partial
            if source is partial:
                if partial.exists() and partial.stat().st_size:
                    logger.info("{}: resuming at byte {:,}", label, partial.stat().st_size)
                fetch = lambda: self.client.download_file(file, partial, run.job_id)  # noqa: E731
            else:
                fetch = lambda: None  # noqa: E731
            try:
                hashed, (content, parts) = stream_and_check(
                    fetch,
                    source,
                    lambda growing: self._split(run, file, growing, scratch),
                    stop=self.stop,
                )
            except CorruptFileError as exc:
                served = sha256_file(source) if source.exists() else None
                if served is not None and (served == file.sha256 or served in rejected):
                    if source is partial:  # the service's own bytes: kept for inspection
                        partial.replace(complete)
                    raise JobInvalidError(str(exc)) from None
                source.unlink(missing_ok=True)  # bad bytes: fetch it whole again (free)
                if served is not None:
                    rejected.add(served)
                raise
            digest = hashed.hexdigest()
            if file.sha256 is not None and digest != file.sha256:
                source.unlink(missing_ok=True)
                for part in parts.values():
                    part.path.unlink(missing_ok=True)
                raise CorruptFileError(
                    f"{label}: its sha256 differs from the job's file list; downloading it again"
                )
            if source is partial:
                partial.replace(complete)
            return replace(content, sha256=digest), parts

        return retrying(
            attempt,
            policy=self.policy,
            stop=self.stop,
            label=label,
            retry_on=(TransientError, CorruptFileError),
        )

    def _split(
        self, run: JobRun, file: JobFile, growing: GrowingFile, scratch: ScratchFiles
    ) -> tuple[Any, tuple[FileContent, dict[str, Part]]]:
        """Check a job file as it arrives (hashing it) and cut it into the members' parts.

        Its header must be the job's (dataset, schema, stypes, symbols as a set); its range
        only bounds its records. Each part is named after the file, so files whose headers
        all carry the job's range do not collide.
        """
        from backend.jobs.engines.split import split_by_symbol

        job = run.record.request
        group = run.group
        name = group.product.name
        source = HashingReader(growing)
        source.name = file.filename  # in messages: not the name of the download in progress
        metadata, replay = peek_metadata(source)
        wrong = header_mismatch(metadata, job)
        if wrong:
            raise CorruptFileError(f"{file.filename} does not match its batch job: {wrong}")
        record_size = group.product.record_size
        finals = {
            member.symbol: member.folder.parts(name) / f"batch_{file.filename}"
            for member in group.members
        }
        temps = {symbol: scratch.new(final) for symbol, final in finals.items()}
        # A resumed job may hold symbols already published: their records are split out too
        # (then dropped), so the file's records are all counted and checked.
        here = group.members[0].folder.parts(name)
        others = {
            symbol: scratch.new(here / f"other_{index}.dbn.zst")
            for index, symbol in enumerate(job.symbols)
            if symbol not in finals
        }
        workdir = None
        try:
            if len(job.symbols) == 1:
                symbol = group.members[0].symbol
                summaries = {symbol: scan(replay, record_size, recode_to=temps[symbol])}
            else:
                workdir = scratch.new_dir(here / "split")
                # the symbols in the file's order: the split checks its header against them
                asked = RangeRequest(job.dataset, tuple(metadata.symbols), job.schema, job.span)
                summaries = split_by_symbol(
                    replay, asked, record_size, {**temps, **others}, workdir, span_from_file=True
                )
            for symbol, final in finals.items():
                publish(temps[symbol], final, durable=False)
        finally:
            if workdir is not None:
                scratch.discard(workdir)
            for temp in [*temps.values(), *others.values()]:
                scratch.discard(temp)
        parts = {}
        for symbol, final in finals.items():
            summary = summaries[symbol]
            alone = RangeRequest(job.dataset, (symbol,), job.schema, job.span)
            layout = PartFile.written(final, summary.metadata_bytes)
            parts[symbol] = Part(alone, final, summary, downloaded=True, layout=layout)
        stamped = [summary for summary in summaries.values() if summary.records]
        content = FileContent(
            name=file.filename,
            records=sum(summary.records for summary in summaries.values()),
            first_ts_recv=min((int(s.first_ts_recv or 0) for s in stamped), default=None),
            last_ts_recv=max((int(s.last_ts_recv or 0) for s in stamped), default=None),
        )
        return source.sha256, (content, parts)

    def _finish(
        self, run: JobRun, scratch: ScratchFiles, started: float
    ) -> Iterator[ProductResult]:
        """Every file checked: validate the job's coverage, then merge and publish each member."""
        from backend.jobs.engines.stream import finish_product

        with self._validating(run):
            problem = coverage_problem(
                run.contents, run.record.request.span, run.details.get("record_count")
            )
            if problem:
                raise JobInvalidError(problem)
        served = {content.name: content.sha256 for content in run.contents}
        batch = BatchRecord(
            job_id=run.job_id,
            cost_usd=run.record.cost_usd,
            symbols=run.record.request.symbols,
            split_duration=run.record.request.split_duration,
            files=tuple(
                JobFileRecord(f.filename, f.size, served.get(f.filename) or str(f.sha256))
                for f in run.files
                if served.get(f.filename) or f.sha256  # a support file without a hash: unknown
            ),
        )
        for member in run.group.members:
            parts = merge_order(
                [parts[member.symbol] for parts in run.parts.values()], member.span
            ) or [self._empty_part(member, scratch)]
            writer = self._writer(member, [part.request.span for part in parts], scratch)
            try:
                for part in parts:
                    writer.add(part)
                result = finish_product(
                    self.request, member=member, writer=writer, started=started, batch=batch
                )
            finally:
                writer.discard()
            member.folder.storage.delete(member.folder.job_key(member.product.name))
            self.progress.finish(member.product.name)
            yield result
        self._drop_job_files(run)

    def _empty_part(self, member: ProductPlan, scratch: ScratchFiles) -> Part:
        """A member's records when the job lists no data file at all: none, behind its header."""
        name = member.product.name
        request = RangeRequest(
            self.request.dataset, (member.symbol,), member.product.schema, member.span
        )
        final = member.folder.make_parts(name) / "batch_empty.dbn.zst"
        served, recoded = scratch.new(final), scratch.new(final)
        try:
            record_size = member.product.record_size
            summary = empty_part(served, request, member.header, record_size, recoded)
            publish(recoded, final, durable=False)
        finally:
            scratch.discard(served)
            scratch.discard(recoded)
        layout = PartFile.written(final, summary.metadata_bytes)
        return Part(request, final, summary, downloaded=True, layout=layout)

    def _writer(
        self, member: ProductPlan, chunks: list[TimeRange], scratch: ScratchFiles
    ) -> MergedWriter:
        """The member's final file, made of `chunks` (its parts, in time order), behind the
        header one request for its whole range carries (`whole_request_header`)."""
        name = member.product.name
        whole = RangeRequest(
            self.request.dataset, (member.symbol,), member.product.schema, member.span
        )
        return MergedWriter(
            member.folder.final(name),
            whole,
            chunks,
            whole_request_header(member),
            scratch,
            destination=(member.folder.storage, member.folder.final_key(name)),
            header_fixed=True,
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


class _Replay:
    """Bytes already read from a stream, then the rest of it."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self.name = rest.name
        self._head = head
        self._rest = rest

    def read(self, size: int) -> bytes:
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._rest.read(size)


class _Recording:
    """Reads a stream, keeping every byte read."""

    def __init__(self, source: Readable) -> None:
        self.name = source.name
        self.data = bytearray()
        self._source = source

    def read(self, size: int) -> bytes:
        data = self._source.read(size)
        self.data += data
        return data


def peek_metadata(source: Readable) -> tuple[Metadata, Readable]:
    """A stream's DBN metadata, and a reader of the whole stream from its first byte."""
    recording = _Recording(source)
    metadata, _ = DbnReader(decompressed_chunks(recording, source.name), source.name).metadata()
    return metadata, _Replay(bytes(recording.data), source)


def header_mismatch(metadata: Metadata, job: JobRequest) -> str:
    """Pure: what in a job file's header is not the job's ("" when nothing).

    Symbols are compared as a set; the range is not compared (a file may carry its own
    period or the job's), its records are checked instead.
    """
    expected = {
        "dataset": (metadata.dataset, job.dataset),
        "schema": (str(metadata.schema), job.schema),
        "stype_in": (str(metadata.stype_in), STYPE_IN),
        "stype_out": (str(metadata.stype_out), STYPE_OUT),
        "symbols": (sorted(set(metadata.symbols)), sorted(set(job.symbols))),
    }
    return ", ".join(
        f"{key} {got!r} != {want!r}" for key, (got, want) in expected.items() if got != want
    )


def whole_request_header(member: ProductPlan) -> HeaderFields:
    """Pure: the header one get_range of the member's whole range carries, never a union of
    its files' headers: the preflight's symbology (symbology.resolve of the whole range), and
    the symbol `partial` when it is not listed over all of that range, as the stream engine
    concludes from its chunks."""
    cursor = member.span.start_ns
    gap = False
    for period in sorted(member.listed):
        gap = gap or period.start_ns > cursor
        cursor = max(cursor, period.end_ns)
    gap = gap or cursor < member.span.end_ns
    return replace(member.header, partial=[member.symbol] if gap else [], not_found=[])


def coverage_problem(files: list[FileContent], span: TimeRange, record_count: Any) -> str:
    """Pure: why a job's data files do not hold exactly its records ("" when they do).

    Every record inside the job's range, no two files overlapping (ordered by their first
    record; a file without records overlaps nothing), and the records adding up to the job's
    `record_count` (when the job reports one). Files for periods without records may be
    there (header only) or not.
    """
    held = [file for file in files if file.records]
    for file in held:
        first, last = int(file.first_ts_recv or 0), int(file.last_ts_recv or 0)
        if first < span.start_ns or last >= span.end_ns:
            return (
                f"{file.name} holds records from {format_ns(first)} to {format_ns(last)}, "
                f"outside the job's range {span}"
            )
    held.sort(key=lambda file: (file.first_ts_recv or 0, file.last_ts_recv or 0))
    for before, after in itertools.pairwise(held):
        if int(before.last_ts_recv or 0) > int(after.first_ts_recv or 0):
            return (
                f"its files {before.name} and {after.name} overlap (records from "
                f"{format_ns(int(after.first_ts_recv or 0))} to "
                f"{format_ns(int(before.last_ts_recv or 0))} in both)"
            )
    total = sum(file.records for file in files)
    counted = isinstance(record_count, int) and not isinstance(record_count, bool)
    if counted and total != record_count:
        return (
            f"its {len(files)} data files hold {total:,} records, the job reports {record_count:,}"
        )
    return ""


def merge_order(parts: list[Part], span: TimeRange) -> list[Part]:
    """Pure: a member's parts as the merge takes them: those with records, by first record.

    Each is relabelled with a range that tiles `span` from its first record to the next
    part's, so the merge can place it whatever range its file's header claimed. Parts without
    records add nothing (the header is the whole request's); only when every part is empty is
    one kept, for the file to be written at all.
    """
    ordered = (
        sorted(
            (part for part in parts if part.summary.records),
            key=lambda part: (part.summary.first_ts_recv or 0, part.summary.last_ts_recv or 0),
        )
        or parts[:1]
    )
    starts = [span.start_ns]
    for part in ordered[1:]:
        starts.append(max(int(part.summary.first_ts_recv or 0), starts[-1] + 1))
    ends = [*starts[1:], span.end_ns]
    return [
        replace(part, request=replace(part.request, span=TimeRange(start, end)))
        for part, start, end in zip(ordered, starts, ends, strict=True)
    ]


def _cost(cost_usd: float | None) -> str:
    from backend.jobs.plan.preflight import usd

    return "cost not reported" if cost_usd is None else usd(float(cost_usd))
