"""A batch job's data files: each downloaded (Range resume, sha256 checked when listed),
decoded, checked and split into its members' parts as it arrives; then the job's coverage
validated by content.

Databento documents neither whether a split period without records gets a (header-only) file
nor whether each file's header carries its own period or the whole job's range, and a file's
hash may be null. So nothing is read from file names or header ranges: the files are ordered
by their first record, every record must lie inside the job's range (and inside its file's
header range when that lies inside the job), files must not overlap, and their records must
add up to the job's `record_count`.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from backend.jobs.client.retry import retrying
from backend.jobs.core.dbn import (
    DbnReader,
    HashingReader,
    Readable,
    StreamSummary,
    decompressed_chunks,
    scan,
    sha256_file,
)
from backend.jobs.core.files import ScratchFiles
from backend.jobs.core.ranges import STYPE_IN, STYPE_OUT, TimeRange, format_ns
from backend.jobs.core.request import JobRequest, RangeRequest
from backend.jobs.engines.batchjob import FileContent, JobRun
from backend.jobs.engines.parts import GrowingFile, Part, publish_part, stream_and_check
from backend.jobs.engines.split import split_by_symbol
from backend.jobs.errors import CorruptFileError, IngestError, TransientError

if TYPE_CHECKING:
    from databento_dbn import Metadata

    from backend.jobs.client.jobfiles import JobFile
    from backend.jobs.engines.runtime import Runtime

PARTIAL_SUFFIX = ".partial"
Checked = tuple[FileContent, dict[str, Part]]  # a data file's content, and its parts by symbol


class JobInvalidError(IngestError):
    """A job's files, as the service serves them, cannot make its products (not retried)."""


def fetch_job_file(runtime: Runtime, run: JobRun, file: JobFile, scratch: ScratchFiles) -> Checked:
    """One data file: downloaded (or found complete), decoded and checked, split into parts.

    Its sha256 is checked when list_files gives one. Bytes that fail the check are fetched
    again (free), unless they are the service's own: the listed sha256, or (no hash) the
    same bytes served twice; then the job's content itself is wrong (JobInvalidError).
    """
    complete = run.folder / file.filename
    partial = complete.with_name(file.filename + PARTIAL_SUFFIX)
    label = f"batch job {run.job_id} file {file.filename}"
    rejected: set[str] = set()  # sha256 of bytes served that failed the check

    def attempt() -> Checked:
        source = complete if complete.exists() else partial
        if source is partial and partial.exists() and partial.stat().st_size:
            logger.info("{}: resuming at byte {:,}", label, partial.stat().st_size)

        def fetch() -> None:
            if source is partial:
                runtime.client.download_file(file, partial, run.job_id)

        try:
            hashed, (content, parts) = stream_and_check(
                fetch,
                source,
                lambda growing: split_job_file(runtime, run, file, growing, scratch),
                stop=runtime.stop,
            )
        except CorruptFileError as exc:
            raise refetch_or_refuse(exc, source, file, rejected, kept=complete) from None
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
        policy=runtime.policy,
        stop=runtime.stop,
        label=label,
        retry_on=(TransientError, CorruptFileError),
    )


def refetch_or_refuse(
    exc: CorruptFileError, source: Path, file: JobFile, rejected: set[str], *, kept: Path
) -> IngestError:
    """A file that fails its check: the service's own bytes (the listed sha256, or the same
    bytes served twice) make the job unusable, kept at `kept` for inspection; other bytes are
    removed, to be fetched whole again (free)."""
    served = sha256_file(source) if source.exists() else None
    if served is not None and (served == file.sha256 or served in rejected):
        if source != kept:
            source.replace(kept)
        return JobInvalidError(str(exc))
    source.unlink(missing_ok=True)
    if served is not None:
        rejected.add(served)
    return exc


def split_job_file(
    runtime: Runtime, run: JobRun, file: JobFile, growing: GrowingFile, scratch: ScratchFiles
) -> tuple[Any, Checked]:
    """Check a job file as it arrives (hashing it) and cut it into the members' parts.

    Its header must be the job's (dataset, schema, stypes, symbols as a set); its range
    only bounds its records. Each part is named after the file, so files whose headers
    all carry the job's range do not collide.
    """
    source = HashingReader(growing)
    source.name = file.filename  # in messages: not the name of the download in progress
    metadata, replay = peek_metadata(source)
    wrong = header_mismatch(metadata, run.record.request)
    if wrong:
        raise CorruptFileError(f"{file.filename} does not match its batch job: {wrong}")
    group = run.group
    name = group.product.name
    finals = {
        member.symbol: runtime.folder(group.dataset, member).parts(name) / f"batch_{file.filename}"
        for member in group.members
    }
    summaries, parts = cut_by_symbol(run, replay, metadata, finals, scratch)
    stamped = [summary for summary in summaries.values() if summary.records]
    content = FileContent(
        name=file.filename,
        records=sum(summary.records for summary in summaries.values()),
        first_ts_recv=min((int(s.first_ts_recv or 0) for s in stamped), default=None),
        last_ts_recv=max((int(s.last_ts_recv or 0) for s in stamped), default=None),
    )
    return source.sha256, (content, parts)


def cut_by_symbol(
    run: JobRun,
    source: Readable,
    metadata: Metadata,
    finals: dict[str, Path],
    scratch: ScratchFiles,
) -> tuple[dict[str, StreamSummary], dict[str, Part]]:
    """Every symbol's records of a job file (a single symbol's: the file re-encoded), and
    the members' parts published at `finals`.

    A resumed job may hold symbols already published: their records are split out too (then
    dropped), so the file's records are all counted and checked.
    """
    job = run.record.request
    record_size = run.group.product.record_size
    here = next(iter(finals.values())).parent
    temps = {symbol: scratch.new(final) for symbol, final in finals.items()}
    others = {
        symbol: scratch.new(here / f"other_{index}.dbn.zst")
        for index, symbol in enumerate(job.symbols)
        if symbol not in finals
    }
    workdir = None
    try:
        if len(job.symbols) == 1:
            symbol = run.group.members[0].symbol
            summaries = {symbol: scan(source, record_size, recode_to=temps[symbol])}
        else:
            workdir = scratch.new_dir(here / "split")
            # the symbols in the file's order: the split checks its header against them
            asked = RangeRequest(job.dataset, tuple(metadata.symbols), job.schema, job.span)
            outputs = {**temps, **others}
            summaries = split_by_symbol(
                source, asked, record_size, outputs, workdir, span_from_file=True
            )
        parts = {
            symbol: publish_part(
                temps[symbol],
                final,
                RangeRequest(job.dataset, (symbol,), job.schema, job.span),
                summaries[symbol],
                downloaded=True,
            )
            for symbol, final in finals.items()
        }
    finally:
        if workdir is not None:
            scratch.discard(workdir)
        for temp in [*temps.values(), *others.values()]:
            scratch.discard(temp)
    return summaries, parts


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
