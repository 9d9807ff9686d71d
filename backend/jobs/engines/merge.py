"""Parts -> one DBN stream equal to what a single request for the whole range returns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from loguru import logger

from backend.jobs.core.dbn import (
    NS_PER_DAY,
    HashingWriter,
    HeaderFields,
    PartFile,
    coalesce,
    encode_header,
    write_day_frames,
)
from backend.jobs.core.files import ScratchFiles
from backend.jobs.core.ranges import TimeRange
from backend.jobs.core.request import RangeRequest
from backend.jobs.engines.parts import Part

if TYPE_CHECKING:
    from backend.jobs.store.base import Store


@dataclass(frozen=True)
class MergedFile:
    path: Path
    bytes: int
    sha256: str
    records: int
    first_ts_recv: int | None
    last_ts_recv: int | None


def symbol_status(parts: list[Part], symbol: str, gaps: bool) -> tuple[list[str], list[str]]:
    """(partial, not_found) for the whole range from what each chunk reported.

    `gaps`: the chunks leave out stretches the symbol was not listed in, which one request for
    the whole range would report as partial.
    """
    missing = [symbol in part.summary.metadata.not_found for part in parts]
    partial = [symbol in part.summary.metadata.partial for part in parts]
    if missing and all(missing):
        return [], [symbol]
    if gaps or any(missing) or any(partial):
        return [symbol], []
    return [], []


def has_gaps(ranges: Iterable[TimeRange], span: TimeRange) -> bool:
    """Pure: whether `ranges` leave some stretch of `span` uncovered (a product's chunks, or
    the periods its symbol is listed in)."""
    cursor = span.start_ns
    for each in sorted(ranges):
        if each.start_ns > cursor:
            return True
        cursor = max(cursor, each.end_ns)
    return cursor < span.end_ns


def header_from_parts(parts: list[Part], span: TimeRange) -> HeaderFields:
    """Mappings merged across chunks (adjacent equal intervals coalesced), status combined."""
    by_symbol: dict[str, list[tuple]] = {}
    for part in parts:
        for raw_symbol, intervals in part.summary.metadata.mappings.items():
            by_symbol.setdefault(raw_symbol, []).extend(
                (item["start_date"], item["end_date"], item["symbol"]) for item in intervals
            )
    symbol = parts[0].request.symbols[0]
    gaps = has_gaps((part.request.span for part in parts), span)
    partial, not_found = symbol_status(parts, symbol, gaps)
    return HeaderFields(
        {symbol: coalesce(intervals) for symbol, intervals in by_symbol.items()}, partial, not_found
    )


class MergedWriter:
    """Writes a product's final file while its chunks are still downloading.

    The header goes first, as one zstd frame, built from the preflight's symbology; each
    part's records frames (one per UTC day) are copied behind it, in chronological order, as
    soon as it is next in line: a multi-frame zstd stream that decodes to exactly the DBN stream
    one request for the whole range returns, framed canonically whatever the chunks were (a
    range fetched in a single request too). If the chunks' own metadata disagrees with the
    predicted header, the body is copied once more behind the right one; if two parts share a
    UTC day (chunks not cut at midnight), it is re-encoded once more in day frames.
    """

    def __init__(
        self,
        final: Path,
        request: RangeRequest,
        chunks: Sequence[TimeRange],
        predicted: HeaderFields,
        scratch: ScratchFiles,
        *,
        destination: tuple[Store, str],
        header_fixed: bool = False,
    ) -> None:
        self.final = final  # local: written beside it, then published to `destination`
        self.store, self.key = destination
        self.request = request
        self.scratch = scratch
        self.parts: list[Part] = []
        self._position = {chunk: index for index, chunk in enumerate(chunks)}
        self._waiting: dict[int, Part] = {}
        self._next = 0
        self._last_day: int | None = None  # UTC day of the last record appended
        self._reframe = False  # two parts share a UTC day: their frames must be joined
        self._header = encode_header(request, predicted)
        # the predicted header is the file's, never rebuilt from the parts' (a batch job's
        # files may each carry their own period's symbology, or the whole job's)
        self._header_fixed = header_fixed
        self._temp = scratch.new(final)
        self._handle: BinaryIO | None = None
        self._sink: HashingWriter | None = None

    def add(self, part: Part) -> None:
        """Take a finished part; append every part that is now next in line (a lone part is
        kept as it is: `finish` may publish it as the file itself)."""
        self.parts.append(part)
        self._waiting[self._position[part.request.span]] = part
        if len(self._position) == 1:
            self._next = 1
            return
        while self._next in self._waiting:
            self._append(self._waiting.pop(self._next))
            self._next += 1

    def _append(self, part: Part) -> None:
        if self._sink is None:
            self._handle = self._temp.open("wb")
            self._sink = HashingWriter(self._handle)
            self._sink.write(PartFile.header_frame(self._header))
        summary = part.summary
        if summary.first_ts_recv is not None and summary.last_ts_recv is not None:
            if self._last_day is not None and summary.first_ts_recv // NS_PER_DAY <= self._last_day:
                self._reframe = True
            self._last_day = summary.last_ts_recv // NS_PER_DAY
        part.layout.copy_records(self._sink)

    def finish(self) -> MergedFile:
        """Publish the final file atomically; every part must have been added."""
        if self._next != len(self._position):
            raise RuntimeError(f"{self.final.name}: merge finished with chunks missing")
        parts = sorted(self.parts, key=lambda part: part.request.span)
        stamps = [part.summary for part in parts if part.summary.records]
        records = sum(part.summary.records for part in parts)
        first_ts = stamps[0].first_ts_recv if stamps else None
        last_ts = stamps[-1].last_ts_recv if stamps else None
        header = (
            self._header
            if self._header_fixed
            else encode_header(self.request, header_from_parts(parts, self.request.span))
        )
        if len(parts) == 1 and self._sink is None:
            lone = parts[0]
            if header == self._header == lone.summary.metadata_bytes:
                # a part is written in the canonical layout: behind the same header it is
                # byte for byte the file, so it is published as it is (no copy, no re-hash)
                self.store.publish(lone.path, self.key)
                self.scratch.forget(lone.path)  # a product's only part is written as a temp
                summary = lone.summary
                return MergedFile(
                    self.final, summary.bytes, summary.sha256, records, first_ts, last_ts
                )
            self._append(lone)
        sink = self._sink
        if sink is None or self._handle is None:
            raise RuntimeError(f"{self.final.name}: no part was appended")
        self._handle.close()
        if header != self._header or self._reframe:
            sink = self._rewrite(header)
        self.store.publish(self._temp, self.key)
        digest = sink.sha256.hexdigest()
        return MergedFile(self.final, sink.bytes, digest, records, first_ts, last_ts)

    def _rewrite(self, header: bytes) -> HashingWriter:
        """Written again behind the right header: the chunks' symbology differs from the
        preflight's (same body), or parts shared a day (the body re-encoded in day frames)."""
        logger.debug(
            "{}: rewriting ({})",
            self.final,
            "parts share a UTC day" if self._reframe else "symbology differs from the preflight's",
        )
        rewritten = self.scratch.new(self.final)
        with rewritten.open("wb") as handle:
            sink = HashingWriter(handle)
            sink.write(PartFile.header_frame(header))
            if self._reframe:
                write_day_frames(self._temp, sink)
            else:
                PartFile.written(self._temp, self._header).copy_records(sink)
        self.scratch.discard(self._temp)
        self._temp = rewritten
        return sink

    def discard(self) -> None:
        """Drop the unfinished file after a failure; safe to call twice."""
        if self._handle is not None:
            self._handle.close()
        self.scratch.discard(self._temp)
