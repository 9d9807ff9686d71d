"""One multi-symbol stream -> one part per symbol, each what a single-symbol request returns.

A `get_range` for several symbols answers one DBN stream: every symbol's records merged in
`ts_recv` order, and a header whose mappings say which `instrument_id` each symbol had on which
dates. Ids change (a corporate action) and are reused (a delisted id given to another symbol),
so a record belongs to a symbol only through its id *and* its date. The split decodes the
stream once, checks it like any part, and writes each symbol's records, in their order, behind
the header a request for that symbol alone would carry (its own mappings, `partial`,
`not_found`), in the canonical `PartFile` layout (one frame per UTC day) the merge copies from.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.jobs.core.dbn import (
    NS_PER_DAY,
    TS_RECV_OFFSET,
    DayFrames,
    DbnReader,
    HashingWriter,
    HeaderFields,
    PartFile,
    Readable,
    RecordCheck,
    StreamSummary,
    decompressed_chunks,
    encode_header,
    opened,
    request_mismatch,
)
from backend.jobs.errors import CorruptFileError

if TYPE_CHECKING:
    from databento_dbn import Metadata

    from backend.jobs.core.request import RangeRequest

INSTRUMENT_ID_OFFSET = 4  # RecordHeader: length u8, rtype u8, publisher_id u16, instrument_id u32
DAY_BITS = 20  # days since 1970 fit in 20 bits until the year 4840
# Small parts are compressed by one thread at a time: their day frames are tiny, zstd gives up
# the GIL around each one, and threads compressing tiny frames at once trade it at every frame
# (measured: two threads spend 3.3x the CPU of one on the same frames). Large ones compress in
# parallel, as zstd works on their megabytes without the GIL.
SMALL_PART_BYTES = 1 << 23
SMALL_PARTS = threading.Lock()


@dataclass(frozen=True)
class Routes:
    """Which symbol owns a record, from its instrument_id and the UTC date of its ts_recv.

    Intervals are kept as sorted keys `instrument_id << DAY_BITS | first day`, so a whole block
    of records is routed with one vectorised search.
    """

    keys: np.ndarray  # uint64, sorted
    end_days: np.ndarray  # exclusive last day of each interval
    owners: np.ndarray  # index into `symbols`
    symbols: tuple[str, ...]

    @classmethod
    def from_metadata(cls, metadata: Metadata, symbols: tuple[str, ...]) -> Routes:
        rows = []
        for index, symbol in enumerate(symbols):
            for item in metadata.mappings.get(symbol, []):
                first, end = _day(item["start_date"]), _day(item["end_date"])
                rows.append(((int(item["symbol"]) << DAY_BITS) | first, end, index))
        rows.sort()
        return cls(
            keys=np.array([row[0] for row in rows], dtype=np.uint64),
            end_days=np.array([row[1] for row in rows], dtype=np.uint64),
            owners=np.array([row[2] for row in rows], dtype=np.int64),
            symbols=symbols,
        )

    def owner_of(self, ids: np.ndarray, days: np.ndarray) -> np.ndarray:
        """The symbol index of each record; -1 where no mapping interval holds it."""
        if not len(self.keys):
            return np.full(len(ids), -1, dtype=np.int64)
        wanted = (ids.astype(np.uint64) << np.uint64(DAY_BITS)) | days
        position = np.searchsorted(self.keys, wanted, side="right").astype(np.int64) - 1
        found = position >= 0
        position = np.where(found, position, 0)
        same_id = (self.keys[position] >> np.uint64(DAY_BITS)) == ids.astype(np.uint64)
        inside = days < self.end_days[position]
        return np.where(found & same_id & inside, self.owners[position], -1)


def _day(value: Any) -> int:
    """Days since 1970-01-01 of a mapping date."""
    return value.toordinal() - 719_163  # date(1970, 1, 1).toordinal()


class SymbolPart:
    """One symbol's part: its records gathered while the stream is split (in memory, spilled
    to a raw file past the split's budget), then written as its header frame and one frame per
    UTC day.

    Compressing only after the stream keeps one zstd context per worker, not one per symbol,
    and memory stays flat whatever the group size: what a split holds is bounded, not what a
    symbol brings.
    """

    READ_RECORDS = 1 << 14  # records read back per block from a spilled raw file

    def __init__(self, path: Path, header: bytes, raw: Path) -> None:
        self.path = path
        self.header = header
        self.raw = raw
        self.pieces: list[bytes] = []
        self.held = 0  # bytes in `pieces`
        self.spilled = False
        self.records = 0
        self.first: int | None = None
        self.last: int | None = None
        self.sha256 = ""
        self.bytes = 0

    def add(self, rows: bytes, records: int, first_ts: int, last_ts: int) -> None:
        if self.first is None:
            self.first = first_ts
        self.last = last_ts
        self.records += records
        self.pieces.append(rows)
        self.held += len(rows)

    def spill(self) -> int:
        """Move the records held in memory to the raw file; the bytes freed."""
        with self.raw.open("ab") as raw:
            raw.writelines(self.pieces)
        freed, self.held = self.held, 0
        self.pieces.clear()
        self.spilled = True
        return freed

    def finish(self, record_size: int) -> None:
        """Write the part: header frame, then the gathered records in day frames."""
        small = self.records * record_size < SMALL_PART_BYTES
        with SMALL_PARTS if small else contextlib.nullcontext(), self.path.open("wb") as handle:
            sink = HashingWriter(handle)
            sink.write(PartFile.header_frame(self.header))
            frames = DayFrames(sink, record_size)
            if self.spilled:
                with self.raw.open("rb") as raw:
                    while block := raw.read(record_size * self.READ_RECORDS):
                        frames.write(block)
            for piece in self.pieces:
                frames.write(piece)
            frames.close()
        self.pieces.clear()
        self.sha256, self.bytes = sink.sha256.hexdigest(), sink.bytes

    def summary(self) -> StreamSummary:
        """The written part, described as a checked part is."""
        from databento_dbn import Metadata

        return StreamSummary(
            metadata=Metadata.decode(self.header),
            metadata_bytes=self.header,
            records=self.records,
            first_ts_recv=self.first,
            last_ts_recv=self.last,
            sha256=self.sha256,
            bytes=self.bytes,
        )


def symbol_header(request: RangeRequest, metadata: Metadata, symbol: str) -> bytes:
    """The header a request for `symbol` alone, over the same range, would start with."""
    from backend.jobs.core.request import RangeRequest

    intervals = [
        (item["start_date"], item["end_date"], item["symbol"])
        for item in metadata.mappings.get(symbol, [])
    ]
    fields = HeaderFields(
        {symbol: intervals} if intervals else {},
        partial=[symbol] if symbol in metadata.partial else [],
        not_found=[symbol] if symbol in metadata.not_found else [],
    )
    alone = RangeRequest(request.dataset, (symbol,), request.schema, request.span)
    return encode_header(alone, fields)


def split_by_symbol(
    source: Path | Readable,
    request: RangeRequest,
    record_size: int,
    outputs: Mapping[str, Path],
    workdir: Path,
    *,
    span_from_file: bool = False,
) -> dict[str, StreamSummary]:
    """Check a multi-symbol stream and write each symbol's own part to `outputs[symbol]`.

    `outputs` may name only some of the request's symbols: the others' records are checked
    and dropped. With `span_from_file` (a batch job's file), the range the stream answers is
    its own header's, and each part's request is that range. `workdir` (a temporary folder,
    emptied by the caller) holds each symbol's raw records until the stream has been read.
    Fails (CorruptFileError) on anything a single part would fail on, and on a record that no
    mapping interval of the requested symbols accounts for.
    """
    from dataclasses import replace

    from backend.jobs.core.ranges import TimeRange

    with contextlib.ExitStack() as stack:
        name, handle = opened(source, stack)
        reader = DbnReader(decompressed_chunks(handle, name), name)
        metadata, _ = reader.metadata()
        if span_from_file:
            request = replace(request, span=TimeRange(metadata.start, metadata.end or 0))
        wrong = request_mismatch(metadata, request)
        if wrong:
            raise CorruptFileError(f"{name} does not match its request: {wrong}")
        routes = Routes.from_metadata(metadata, request.symbols)
        parts = {
            symbol: SymbolPart(
                outputs[symbol], symbol_header(request, metadata, symbol), workdir / f"{index}.raw"
            )
            for index, symbol in enumerate(request.symbols)
            if symbol in outputs
        }
        router = Router(routes, [parts.get(symbol) for symbol in request.symbols], name)
        check = RecordCheck(name, record_size, request.span.start_ns, request.span.end_ns)
        for block in reader.record_blocks(record_size):
            check.feed(block)
            router.take(block, record_size)
        router.flush(record_size)
        for part in parts.values():
            part.finish(record_size)
    return {symbol: part.summary() for symbol, part in parts.items()}


class Router:
    """Hands each record to its symbol's part (dropped if the symbol has none), in order, a few
    MiB of records at a time: each symbol gets one piece per batch, not one per decoded block.
    A record no mapping interval accounts for fails the stream."""

    BATCH_BYTES = 1 << 22
    HELD_BYTES = 1 << 25  # records a split keeps in memory before spilling the largest parts

    def __init__(self, routes: Routes, parts: list[SymbolPart | None], name: str) -> None:
        self.routes = routes
        self.parts = parts  # by symbol index; None: checked, not kept
        self.name = name
        self.batch = bytearray()  # the reader reuses its views: records are copied here
        self.held = 0

    def take(self, block: memoryview, record_size: int) -> None:
        self.batch += block
        if len(self.batch) >= self.BATCH_BYTES:
            self.flush(record_size)

    def flush(self, record_size: int) -> None:
        if not self.batch:
            return
        data, self.batch = self.batch, bytearray()
        self.held += self._route(np.frombuffer(data, dtype=np.uint8).reshape(-1, record_size))
        if self.held > self.HELD_BYTES:
            for part in sorted(filter(None, self.parts), key=lambda part: -part.held):
                self.held -= part.spill()
                if self.held <= self.HELD_BYTES // 2:
                    break

    def _route(self, rows: np.ndarray) -> int:
        """Append each symbol's records of `rows` to its part; the bytes now held."""
        ids = rows[:, INSTRUMENT_ID_OFFSET : INSTRUMENT_ID_OFFSET + 4].copy().view("<u4").ravel()
        stamps = rows[:, TS_RECV_OFFSET : TS_RECV_OFFSET + 8].copy().view("<u8").ravel()
        owners = self.routes.owner_of(ids, stamps // np.uint64(NS_PER_DAY))
        if (owners < 0).any():
            stray = int(ids[np.argmax(owners < 0)])
            raise CorruptFileError(
                f"{self.name} holds records of instrument_id {stray} that no requested symbol "
                "maps to on their date"
            )
        # owners are symbol indexes (a request names at most 2,000): a stable sort of int16 is
        # a radix sort, and the counts give each symbol's slice of the sorted records
        order = np.argsort(owners.astype(np.int16), kind="stable")
        counts = np.bincount(owners, minlength=len(self.parts))
        present = np.flatnonzero(counts)
        ends = np.cumsum(counts)[present]
        starts = ends - counts[present]
        ordered, stamps = rows[order], stamps[order]
        held = 0
        for index, first, end, first_ts, last_ts in zip(
            present.tolist(),
            starts.tolist(),
            ends.tolist(),
            stamps[starts].tolist(),
            stamps[ends - 1].tolist(),
            strict=True,
        ):
            part = self.parts[index]
            if part is not None:
                piece = ordered[first:end].tobytes()
                part.add(piece, end - first, first_ts, last_ts)
                held += len(piece)
        return held
