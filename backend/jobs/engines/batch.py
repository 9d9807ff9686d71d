"""The batch engine: one Databento batch job per group, paid once, into the very same files.

    submit (or resume the recorded job) -> wait, visibly, within --batch-timeout -> list its
    files -> download, check and split each data file on one bounded pool (batchfiles.py) ->
    validate the job's coverage by content -> merge, publish and record like the stream
    engine, with the job in the manifest

The merged header is the preflight's, from the symbology of the whole request, as one
full-range get_range carries it.

A paid job whose files fail that validation is never stuck in a loop of re-runs: its record
is marked failed (the reason kept in batch-job.json) with its files left for inspection, and
every later run says so (exit 1) until it is run with --engine stream or --force.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import TYPE_CHECKING

from loguru import logger

from backend.jobs.cache.entry import BatchRecord, JobFileRecord
from backend.jobs.cache.jobrecord import read_record
from backend.jobs.cache.layout import SymbolYear
from backend.jobs.core.dbn import HeaderFields
from backend.jobs.core.files import ScratchFiles
from backend.jobs.core.request import ProductResult, RangeRequest
from backend.jobs.engines.batchfiles import (
    Checked,
    JobInvalidError,
    coverage_problem,
    fetch_job_file,
    merge_order,
)
from backend.jobs.engines.batchjob import (
    JobRun,
    describe,
    hold_job_folder,
    record_group,
    submit_job,
    unusable_message,
)
from backend.jobs.engines.merge import has_gaps
from backend.jobs.engines.parts import Part, empty_part, publish_part
from backend.jobs.engines.publish import finish_product, merged_writer
from backend.jobs.engines.runtime import Runtime, bounded_pool
from backend.jobs.errors import IngestError, JobGoneError, RunStoppedError

if TYPE_CHECKING:
    from backend.jobs.core.work import GroupPlan, ProductPlan

POLL_MAX_S, POLL_GROWTH = 30.0, 1.5
Fetching = dict[Future[Checked], JobRun]


def submit_jobs(
    groups: Sequence[GroupPlan], runtime: Runtime, locks: contextlib.ExitStack
) -> list[JobRun]:
    """Every group's job exists and is recorded in its members' working folders; its download
    folder is held until `locks` closes.

    Run before the stream engine, so the service prepares the jobs meanwhile.
    """
    runs = []
    for group in groups:
        if group.job is None:
            record = submit_job(runtime, group)
        else:
            record = group.job
            logger.info(
                "resuming batch job {} for {} ({}): no new charge",
                *(record.job_id, describe(record.request, group.year), group.why),
            )
        folder = hold_job_folder(runtime, str(record.job_id), locks)
        runs.append(JobRun(group, record, folder))
    return runs


def collect(runs: list[JobRun], runtime: Runtime) -> Iterator[ProductResult]:
    """Wait for the jobs, fetch their files on one bounded pool, publish each product."""
    if not runs:
        return
    scratch = ScratchFiles()
    try:
        yield from fetch_jobs(runs, runtime, scratch, time.monotonic())
    except JobGoneError as exc:
        raise IngestError(
            f"{exc}: the job expired or is unknown to Databento now; run the same command "
            "again to submit a new one (billed, within --max-cost)"
        ) from None
    finally:
        scratch.remove_all()


def fetch_jobs(
    runs: list[JobRun], runtime: Runtime, scratch: ScratchFiles, started: float
) -> Iterator[ProductResult]:
    """Poll the jobs not done (each at its own pace) until the deadline; start each done job's
    files; take each file as it is checked; finish each job whose files are all in."""
    waiting = list(runs)
    deadline = time.monotonic() + runtime.config.batch_timeout_s
    fetching: Fetching = {}
    with bounded_pool(runtime, "batch") as pool:
        while waiting or fetching:
            for run in [run for run in waiting if run.next_poll <= time.monotonic()]:
                if not poll(runtime, run):
                    continue
                waiting.remove(run)
                with validating(runtime, run):
                    start_files(runtime, run, pool, fetching, scratch)
                if run.pending == 0:  # no data file at all
                    yield from finish_job(runtime, run, scratch, started)
            check_deadline(runtime, waiting, deadline)
            next_poll = min((run.next_poll for run in waiting), default=None)
            timeout = None if next_poll is None else max(0.0, next_poll - time.monotonic())
            for future in next_finished(runtime, fetching, timeout):
                run = fetching.pop(future)
                with validating(runtime, run):
                    content, parts = future.result()
                run.contents.append(content)
                run.parts[content.name] = parts
                for member in run.group.members:
                    runtime.events.advance(member.product.name, parts[member.symbol].summary.bytes)
                run.pending -= 1
                if run.pending == 0:
                    yield from finish_job(runtime, run, scratch, started)


@contextlib.contextmanager
def validating(runtime: Runtime, run: JobRun) -> Iterator[None]:
    """A job whose files fail validation is recorded as failed, once, and ends the run."""
    try:
        yield
    except JobInvalidError as exc:
        record = run.record = run.record.failing(str(exc))
        record_group(runtime, run.group, record)
        for parts in run.parts.values():
            for part in parts.values():
                part.path.unlink(missing_ok=True)
        message = unusable_message(record, runtime.config.work_dir, run.group.year)
        raise IngestError(message) from None


def next_finished(runtime: Runtime, fetching: Fetching, timeout: float | None) -> set:
    """Files finished within `timeout` (None: wait for one); a stopped run raises."""
    if fetching:
        done, _ = wait(fetching, timeout=timeout, return_when=FIRST_COMPLETED)
        return done
    if runtime.stop.wait(timeout or 0):
        raise RunStoppedError("waiting for batch jobs: cancelled")
    return set()


def poll(runtime: Runtime, run: JobRun) -> bool:
    """Ask for the job's state (logged when it changes); True once it is done."""
    details = run.details = runtime.client.job_details(run.job_id)
    state = str(details.get("state"))
    if state != run.state:
        run.state = state
        logger.info("batch job {} ({}): {}", run.job_id, run.what, state)
    if state == "done":
        runtime.events.waiting(f"job {run.job_id}", state, 100)
        return True
    if state == "expired":
        raise IngestError(
            f"batch job {run.job_id} ({run.what}) expired while this run waited: run the same "
            "command again to submit a new one (billed, within --max-cost)"
        )
    percent = details.get("progress")
    shown = int(percent) if isinstance(percent, int | float) else None
    runtime.events.waiting(f"job {run.job_id}", state, shown)
    run.next_poll = time.monotonic() + run.interval
    run.interval = min(POLL_MAX_S, run.interval * POLL_GROWTH)
    return False


def check_deadline(runtime: Runtime, waiting: list[JobRun], deadline: float) -> None:
    if not waiting or time.monotonic() <= deadline:
        return
    jobs = ", ".join(f"{run.job_id} ({run.what}: {run.state})" for run in waiting)
    raise IngestError(
        f"batch jobs still unfinished after {runtime.config.batch_timeout_s:.0f}s "
        f"(--batch-timeout): {jobs}; they stay recorded: run the same command again later to "
        "pick them up (no new charge)"
    )


def start_files(
    runtime: Runtime,
    run: JobRun,
    pool: ThreadPoolExecutor,
    fetching: Fetching,
    scratch: ScratchFiles,
) -> None:
    """A done job's data files, each submitted to the pool; its members' progress started."""
    run.files = runtime.client.job_files(run.job_id)
    data = [file for file in run.files if file.is_data]
    unreachable = [file.filename for file in data if not file.url]
    if unreachable:
        raise JobInvalidError(
            f"list_files gives no https URL for {len(unreachable)} of its data files "
            f"({unreachable[0]}, ...)"
        )
    run.pending = len(data)
    for member in run.group.members:
        runtime.events.start(member.product.name, len(data))
    for file in data:
        fetching[pool.submit(fetch_job_file, runtime, run, file, scratch)] = run


def finish_job(
    runtime: Runtime, run: JobRun, scratch: ScratchFiles, started: float
) -> Iterator[ProductResult]:
    """Every file checked: validate the job's coverage, then merge and publish each member."""
    with validating(runtime, run):
        span, count = run.record.request.span, run.details.get("record_count")
        problem = coverage_problem(run.contents, span, count)
        if problem:
            raise JobInvalidError(problem)
    batch = batch_record(run)
    group = run.group
    for member in group.members:
        parts = merge_order(
            [parts[member.symbol] for parts in run.parts.values()], member.span
        ) or [empty_member_part(runtime, group, member, scratch)]
        chunks = [part.request.span for part in parts]
        header = whole_request_header(member)
        writer = merged_writer(runtime, group, member, scratch, chunks=chunks, header=header)
        try:
            for part in parts:
                writer.add(part)
            result = finish_product(runtime, group, member, writer, started=started, batch=batch)
        finally:
            writer.discard()
        folder = runtime.folder(group.dataset, member)
        runtime.store.delete(folder.job_key(member.product.name))
        runtime.events.finish(member.product.name)
        yield result
    drop_job_files(runtime, run)


def batch_record(run: JobRun) -> BatchRecord:
    """The job as the manifest records it: its files as served (their sha256 as checked)."""
    served = {content.name: content.sha256 for content in run.contents}
    return BatchRecord(
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


def empty_member_part(
    runtime: Runtime, group: GroupPlan, member: ProductPlan, scratch: ScratchFiles
) -> Part:
    """A member's records when the job lists no data file at all: none, behind its header."""
    name = member.product.name
    request = RangeRequest(group.dataset, (member.symbol,), member.product.schema, member.span)
    final = runtime.folder(group.dataset, member).make_parts(name) / "batch_empty.dbn.zst"
    served, recoded = scratch.new(final), scratch.new(final)
    try:
        record_size = member.product.record_size
        summary = empty_part(served, request, member.header, record_size, recoded)
        return publish_part(recoded, final, request, summary, downloaded=True)
    finally:
        scratch.discard(served)
        scratch.discard(recoded)


def whole_request_header(member: ProductPlan) -> HeaderFields:
    """Pure: the header one get_range of the member's whole range carries, never a union of
    its files' headers: the preflight's symbology (symbology.resolve of the whole range), and
    the symbol `partial` when it is not listed over all of that range, as the stream engine
    concludes from its chunks."""
    gap = has_gaps(member.listed, member.span)
    return replace(member.header, partial=[member.symbol] if gap else [], not_found=[])


def drop_job_files(runtime: Runtime, run: JobRun) -> None:
    """Remove the job's downloads unless another symbol-year still counts on them."""
    job = run.record.request
    year, name = run.group.year, run.group.product.name
    for symbol in job.symbols:
        other = read_record(runtime.store, SymbolYear(symbol, year, job.dataset).job_key(name))
        if other is not None and other.job_id == run.job_id:
            return
    shutil.rmtree(run.folder, ignore_errors=True)
