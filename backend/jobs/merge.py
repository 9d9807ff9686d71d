"""Parts -> one DBN stream equal to what a single request for the whole range returns."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, BinaryIO

import zstandard

from backend.jobs.cache import ScratchFiles, publish
from backend.jobs.chunks import Part
from backend.jobs.dbnfile import DbnReader, decompressed_chunks
from backend.jobs.plan import TimeRange

if TYPE_CHECKING:
    from databento_dbn import Metadata

# Level 1 keeps the merge at download speed; the raw data compresses ~5x at any level.
COMPRESSION_LEVEL = 1
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


class HashingWriter:
    """A file wrapper that hashes and counts what the compressor writes."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()


class ProductMerger:
    """Builds one product's final file while its chunks are still downloading.

    Parts are appended in chronological order as soon as the next one is in, recompressed into
    a body of zstd frames. The header needs every chunk's symbology, so it is written last as its
    own frame in front of the body: a multi-frame zstd stream that decodes to exactly one DBN
    stream. A range fetched in a single request is kept byte for byte as served instead.
    """

    def __init__(
        self,
        final: Path,
        span: TimeRange,
        chunks: list[TimeRange],
        record_size: int,
        scratch: ScratchFiles,
    ) -> None:
        self.final = final
        self.span = span
        self.record_size = record_size
        self.scratch = scratch
        self.parts: list[Part] = []
        self._position = {chunk: index for index, chunk in enumerate(chunks)}
        self._waiting: dict[int, Part] = {}
        self._next = 0
        self._as_served = chunks == [span]
        self._body_path = scratch.new(final.with_suffix(".body"))
        self._body: BinaryIO | None = None
        self._writer: Any = None

    def add(self, part: Part) -> None:
        """Take a finished part; append every part that is now next in line."""
        self.parts.append(part)
        self._waiting[self._position[part.request.span]] = part
        while self._next in self._waiting:
            self._append(self._waiting.pop(self._next))
            self._next += 1

    def _append(self, part: Part) -> None:
        if self._as_served:
            return
        if self._writer is None:
            self._body = self._body_path.open("wb")
            compressor = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, write_checksum=True)
            self._writer = compressor.stream_writer(self._body, closefd=False)
        with part.path.open("rb") as source:
            reader = DbnReader(decompressed_chunks(source, part.path.name), part.path.name)
            reader.metadata()
            for block in reader.record_blocks(self.record_size):
                self._writer.write(block)

    def finish(self) -> MergedFile:
        """Write header + body to a temp file and publish it; every part must be in."""
        if len(self.parts) != len(self._position):
            raise RuntimeError(f"merge of {self.final.name} finished with parts missing")
        parts = sorted(self.parts, key=lambda part: part.request.span)
        records = sum(part.summary.records for part in parts)
        stamps = [part.summary for part in parts if part.summary.records]
        first_ts = stamps[0].first_ts_recv if stamps else None
        last_ts = stamps[-1].last_ts_recv if stamps else None
        if self._as_served:
            only = parts[0]
            publish(only.path, self.final)
            return MergedFile(
                self.final, only.summary.bytes, only.summary.sha256, records, first_ts, last_ts
            )
        temp = self.scratch.new(self.final)
        try:
            self._close_body()
            header = merged_metadata(parts, self.span).encode()
            with temp.open("wb") as handle:
                sink = HashingWriter(handle)
                sink.write(zstandard.ZstdCompressor(write_checksum=True).compress(header))
                if self._body is not None:
                    with self._body_path.open("rb") as body:
                        while block := body.read(COPY_SIZE):
                            sink.write(block)
            publish(temp, self.final)
        finally:
            self.discard()
            self.scratch.discard(temp)
        return MergedFile(
            self.final, sink.bytes, sink.sha256.hexdigest(), records, first_ts, last_ts
        )

    def _close_body(self) -> None:
        if self._writer is not None:
            self._writer.close()  # ends the frame; closefd=False leaves the file to us
            self._writer = None
        if self._body is not None:
            self._body.close()

    def discard(self) -> None:
        """Drop the body; safe to call after a failure or twice."""
        try:
            self._close_body()
        finally:
            self.scratch.discard(self._body_path)
