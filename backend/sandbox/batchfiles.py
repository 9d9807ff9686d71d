"""A batch job's files: one DBN file per split period, then the support files, written to disk.

By default each data file is byte for byte the timeseries.get_range body (encoding=dbn and the
job's compression) for the job's symbols over the job's range clipped to the file's period.
Databento does not document two things, so the job's `JobSource` picks each (tests run both):

- `empty_files`: a period without records (a weekend day, an empty week) gets a header-only
  file ("present") or no file at all ("absent");
- `headers`: each file's DBN header carries its own period as `start`/`end` with the period's
  symbology ("period"), or the whole job's range, symbology, `partial` and `not_found` in
  every file ("job"); the records are the period's either way.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

from backend.sandbox.bodies import BodySettings, RangeQuery, matching_fixture, range_body
from backend.sandbox.catalog import Resolution, SymbolCatalog, day_conditions, resolve_answer
from backend.sandbox.dbnstream import encode_body, encode_metadata
from backend.sandbox.records import count_records, iter_range_records
from backend.sandbox.timestamps import ceil_date, date_to_ns, format_iso_ns, ns_to_date

SPLIT_DURATIONS = ("day", "week", "month", "year", "none")
SUPPORT_FILES = ("metadata.json", "symbology.json", "condition.json")
EMPTY_FILES = ("present", "absent")
FILE_HEADERS = ("period", "job")
EmptyFiles = Literal["present", "absent"]
FileHeaders = Literal["period", "job"]


class JobFilesCancelledError(Exception):
    """The job's files stopped being written (its job was forgotten or the gateway reset)."""


@dataclass(frozen=True)
class BatchRequest:
    """A job's validated submit_job parameters."""

    dataset: str
    schema: str
    symbols: tuple[str, ...]
    stype_in: str
    stype_out: str
    start_ns: int
    end_ns: int
    encoding: str
    compression: Literal["zstd", "none"]
    pretty_px: bool
    pretty_ts: bool
    map_symbols: bool
    split_duration: str
    split_size: int | None
    delivery: str

    def query_fields(self) -> dict[str, Any]:
        """What is asked for, as the job object shows it."""
        return {
            "dataset": self.dataset,
            "symbols": list(self.symbols),
            "stype_in": self.stype_in,
            "stype_out": self.stype_out,
            "schema": self.schema,
            "start": format_iso_ns(self.start_ns),
            "end": format_iso_ns(self.end_ns),
            "limit": None,
        }

    def delivery_fields(self) -> dict[str, Any]:
        """How it is delivered, as the job object shows it."""
        return {
            "encoding": self.encoding,
            "compression": self.compression,
            "pretty_px": self.pretty_px,
            "pretty_ts": self.pretty_ts,
            "map_symbols": self.map_symbols,
            "split_symbols": False,
            "split_duration": self.split_duration,
            "split_size": self.split_size,
            "packaging": None,
            "delivery": self.delivery,
        }


@dataclass(frozen=True)
class JobSource:
    """What a job's files are made from, captured when it is submitted: later changes to the
    gateway (symbols, settings, degraded days) do not reach a submitted job."""

    body: BodySettings
    catalog: SymbolCatalog
    degraded_days: frozenset[date]
    empty_files: EmptyFiles = "present"  # a period without records: header-only file, or none
    headers: FileHeaders = "period"  # each file's header: its own period, or the job's range


@dataclass(frozen=True)
class BatchFile:
    filename: str
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class JobFiles:
    data: list[BatchFile]
    support: list[BatchFile]

    @property
    def all(self) -> list[BatchFile]:
        """Data files first, then the support files (list_files' order)."""
        return [*self.data, *self.support]


def split_periods(start_ns: int, end_ns: int, split_duration: str) -> list[tuple[int, int]]:
    """[start_ns, end_ns) cut at the split boundaries: UTC days, weeks starting Sunday,
    calendar months or years; "none" keeps it whole."""
    if split_duration == "none":
        return [(start_ns, end_ns)]
    periods = []
    boundary = _period_start(ns_to_date(start_ns), split_duration)
    while date_to_ns(boundary) < end_ns:
        following = _next_period_start(boundary, split_duration)
        periods.append((max(start_ns, date_to_ns(boundary)), min(end_ns, date_to_ns(following))))
        boundary = following
    return periods


def _period_start(day: date, split_duration: str) -> date:
    if split_duration == "day":
        return day
    if split_duration == "week":
        return day - timedelta(days=(day.weekday() + 1) % 7)
    if split_duration == "month":
        return day.replace(day=1)
    return day.replace(month=1, day=1)


def _next_period_start(start: date, split_duration: str) -> date:
    if split_duration == "day":
        return start + timedelta(days=1)
    if split_duration == "week":
        return start + timedelta(days=7)
    if split_duration == "month":
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return start.replace(year=start.year + 1)


def data_filename(request: BatchRequest, start_ns: int, end_ns: int) -> str:
    """`xnas-itch-20230103.trades.dbn.zst` for a day split, else the first and last day the
    file covers: `xnas-itch-20230101-20230131.trades.dbn.zst`; `.dbn` when uncompressed."""
    prefix = request.dataset.lower().replace(".", "-")
    first, last = ns_to_date(start_ns), ns_to_date(end_ns - 1)
    days = f"{first:%Y%m%d}"
    if request.split_duration != "day":
        days += f"-{last:%Y%m%d}"
    extension = ".dbn.zst" if request.compression == "zstd" else ".dbn"
    return f"{prefix}-{days}.{request.schema}{extension}"


def write_job_files(
    directory: Path,
    job_id: str,
    request: BatchRequest,
    source: JobSource,
    cancelled: threading.Event | None = None,
) -> JobFiles:
    """Write every file of the job into `directory`, streaming each body to disk.

    Once `cancelled` is set, the next chunk raises JobFilesCancelledError.
    """
    directory.mkdir(parents=True, exist_ok=True)
    data = [
        _write(directory / data_filename(request, start_ns, end_ns), body, cancelled)
        for start_ns, end_ns, body in _period_bodies(request, source)
    ]
    support = {
        "metadata.json": _metadata_json(job_id, request),
        "symbology.json": _symbology_json(request, source.catalog),
        "condition.json": _condition_json(request, source.degraded_days),
    }
    return JobFiles(
        data=data,
        support=[
            _write(directory / name, [content], cancelled) for name, content in support.items()
        ],
    )


def write_zip(path: Path, files: Iterable[BatchFile]) -> None:
    """All the job's files in one archive (stored: the DBN files are compressed already)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for batch_file in files:
            archive.write(batch_file.path, arcname=batch_file.filename)


def _period_bodies(
    request: BatchRequest, source: JobSource
) -> Iterator[tuple[int, int, Iterator[bytes]]]:
    """Each period's body, as `source.headers` says; a period where no symbol resolves gets a
    header only, and a period without records no file when `source.empty_files` is "absent"."""
    symbols = list(request.symbols)
    whole = source.catalog.resolve(
        request.dataset, symbols, ns_to_date(request.start_ns), ceil_date(request.end_ns)
    )
    for start_ns, end_ns in split_periods(request.start_ns, request.end_ns, request.split_duration):
        resolution = source.catalog.resolve(
            request.dataset, symbols, ns_to_date(start_ns), ceil_date(end_ns)
        )
        query = RangeQuery(
            request.dataset, request.schema, symbols, start_ns, end_ns, None, resolution
        )
        if source.empty_files == "absent" and not _records_in(source.body, query):
            continue
        if source.headers == "job":
            yield start_ns, end_ns, _job_header_body(request, source.body, query, whole)
        else:
            yield start_ns, end_ns, range_body(source.body, query, request.compression)


def _records_in(settings: BodySettings, query: RangeQuery) -> int:
    """How many records the period's get_range body holds (counted, not generated)."""
    fixture = matching_fixture(settings.fixtures, query)
    if fixture is not None:
        return fixture.record_count
    return sum(
        count_records(
            query.dataset,
            symbol,
            intervals,
            start_ns=query.start_ns,
            end_ns=query.end_ns,
            records_per_day=settings.records_per_day,
        )
        for symbol, intervals in query.resolution.mappings.items()
    )


def _job_header_body(
    request: BatchRequest, settings: BodySettings, period: RangeQuery, whole: Resolution
) -> Iterator[bytes]:
    """The period's records behind the header of the whole job (its range and symbology)."""
    metadata = encode_metadata(
        dataset=request.dataset,
        schema=request.schema,
        start_ns=request.start_ns,
        end_ns=request.end_ns,
        limit=None,
        symbols=request.symbols,
        partial=whole.partial,
        not_found=whole.not_found,
        mappings=whole.mappings,
    )
    records = iter_range_records(
        period.dataset,
        period.schema,
        period.resolution.mappings,
        start_ns=period.start_ns,
        end_ns=period.end_ns,
        records_per_day=settings.records_per_day,
    )
    return encode_body(
        metadata,
        records,
        compression=request.compression,
        frames=settings.frames,
        level=settings.compression_level,
    )


def _write(
    path: Path, chunks: Iterable[bytes], cancelled: threading.Event | None = None
) -> BatchFile:
    digest = hashlib.sha256()
    size = 0
    with path.open("wb") as out:
        for chunk in chunks:
            if cancelled is not None and cancelled.is_set():
                raise JobFilesCancelledError(path.name)
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return BatchFile(path.name, path, size, digest.hexdigest())


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2).encode()


def _metadata_json(job_id: str, request: BatchRequest) -> bytes:
    return _json_bytes(
        {
            "job_id": job_id,
            "query": request.query_fields(),
            "customizations": request.delivery_fields(),
        }
    )


def _symbology_json(request: BatchRequest, catalog: SymbolCatalog) -> bytes:
    start_date, end_date = ns_to_date(request.start_ns), ceil_date(request.end_ns)
    resolution = catalog.resolve(request.dataset, list(request.symbols), start_date, end_date)
    return _json_bytes(
        resolve_answer(
            resolution,
            symbols=request.symbols,
            stype_in=request.stype_in,
            stype_out=request.stype_out,
            start_date=start_date,
            end_date=end_date,
        )
    )


def _condition_json(request: BatchRequest, degraded_days: frozenset[date]) -> bytes:
    first, end = ns_to_date(request.start_ns), ceil_date(request.end_ns)
    return _json_bytes(day_conditions(first, end, degraded_days))
