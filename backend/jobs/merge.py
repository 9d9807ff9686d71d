"""Parts -> one DBN stream equal to what a single request for the whole range returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from backend.jobs.cache import ScratchFiles, publish
from backend.jobs.chunks import Part
from backend.jobs.dbnfile import HashingWriter, compress_frame
from backend.jobs.plan import TimeRange

if TYPE_CHECKING:
    from databento_dbn import Metadata

COPY_SIZE = 1 << 20


@dataclass(frozen=True)
class MergedFile:
    path: Path
    bytes: int
    sha256: str
    records: int
    first_ts_recv: int | None
    last_ts_recv: int | None


def coalesce(intervals: list[tuple]) -> list[tuple]:
    """Join (start_date, end_date, symbol) intervals that touch or overlap with the same symbol."""
    merged: list[tuple] = []
    for start, end, symbol in sorted(intervals):
        if merged and merged[-1][2] == symbol and start <= merged[-1][1]:
            previous = merged[-1]
            merged[-1] = (previous[0], max(previous[1], end), symbol)
        else:
            merged.append((start, end, symbol))
    return merged


def symbol_status(parts: list[Part], symbol: str) -> tuple[list[str], list[str]]:
    """(partial, not_found) for the whole range from what each chunk reported."""
    missing = [symbol in part.summary.metadata.not_found for part in parts]
    partial = [symbol in part.summary.metadata.partial for part in parts]
    if missing and all(missing):
        return [], [symbol]
    if any(missing) or any(partial):
        return [symbol], []
    return [], []


def merged_metadata(parts: list[Part], span: TimeRange) -> Metadata:
    from databento_dbn import Metadata, Schema, SType

    first = parts[0].summary.metadata
    symbol = parts[0].request.symbol
    by_symbol: dict[str, list[tuple]] = {}
    for part in parts:
        for raw_symbol, intervals in part.summary.metadata.mappings.items():
            by_symbol.setdefault(raw_symbol, []).extend(
                (item["start_date"], item["end_date"], item["symbol"]) for item in intervals
            )
    mappings = [
        SimpleNamespace(
            raw_symbol=raw_symbol,
            intervals=[
                SimpleNamespace(start_date=start, end_date=end, symbol=value)
                for start, end, value in coalesce(intervals)
            ],
        )
        for raw_symbol, intervals in by_symbol.items()
    ]
    partial, not_found = symbol_status(parts, symbol)
    return Metadata(
        dataset=first.dataset,
        schema=Schema(str(first.schema)),
        start=span.start_ns,
        end=span.end_ns,
        stype_in=SType(str(first.stype_in)),
        stype_out=SType(str(first.stype_out)),
        symbols=[symbol],
        partial=partial,
        not_found=not_found,
        mappings=mappings,
        limit=None,
        ts_out=first.ts_out,
    )


def merge_parts(
    parts: list[Part], span: TimeRange, final: Path, scratch: ScratchFiles
) -> MergedFile:
    """One DBN stream for the whole range, published atomically at `final`.

    A range fetched in a single request is kept byte for byte as served. Otherwise the merged
    header is written as one zstd frame and each part's records frame is copied behind it,
    in order, without being decompressed: a multi-frame zstd stream that decodes to exactly
    the DBN stream one request for the whole range returns.
    """
    parts = sorted(parts, key=lambda part: part.request.span)
    records = sum(part.summary.records for part in parts)
    stamps = [part.summary for part in parts if part.summary.records]
    first_ts = stamps[0].first_ts_recv if stamps else None
    last_ts = stamps[-1].last_ts_recv if stamps else None
    if len(parts) == 1 and parts[0].records_offset is None:
        only = parts[0]
        publish(only.path, final)
        return MergedFile(
            final, only.summary.bytes, only.summary.sha256, records, first_ts, last_ts
        )
    temp = scratch.new(final)
    try:
        with temp.open("wb") as handle:
            sink = HashingWriter(handle)
            sink.write(compress_frame(merged_metadata(parts, span).encode()))
            for part in parts:
                with part.path.open("rb") as source:
                    source.seek(part.records_offset or 0)
                    while block := source.read(COPY_SIZE):
                        sink.write(block)
        publish(temp, final)
    finally:
        scratch.discard(temp)
    return MergedFile(final, sink.bytes, sink.sha256.hexdigest(), records, first_ts, last_ts)
