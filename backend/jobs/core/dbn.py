"""Reading and checking zstd-compressed DBN streams in constant memory.

`zstandard`'s stream reader silently accepts a truncated last frame, so decompression here
walks frame by frame and fails unless every frame it started also ended. Streams may hold
several concatenated frames; all of them are read.

Files this tool writes (parts and final files) are framed canonically: the DBN header as one
zstd frame, then one frame per UTC day of the records' `ts_recv` (`DayFrames`). Their bytes
are then a function of the metadata and records alone, whatever chunks they arrived in.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, BinaryIO, Protocol

import zstandard

from backend.jobs.errors import CorruptFileError

if TYPE_CHECKING:
    from databento_dbn import Metadata

    from backend.jobs.core.ranges import TimeRange
    from backend.jobs.core.request import RangeRequest

READ_SIZE = 1 << 15  # small reads keep decompressed pieces in cache and memory flat
COPY_SIZE = 1 << 18  # copies of compressed frames: larger blocks, fewer system calls
DBN_MAGIC = b"DBN"
DBN_VERSION = 3
PREFIX = struct.Struct("<3sBI")  # magic, version, metadata length
# zstd's first fast level: re-encoding is most of this tool's CPU, and on the benchmark year it
# was ~25% faster than level 1 for a similar size; readers decompress it faster too.
COMPRESSION_LEVEL = -1
TS_RECV_OFFSET = 32  # same in TradeMsg and MBP1Msg: header(16) price(8) size(4) 4 x u8
NS_PER_DAY = 86_400 * 1_000_000_000
# Each day's frame is fed to zstd in pieces of this size counted from the frame's start, so its
# bytes never depend on how the records arrived; memory stays flat however big the day is.
FRAME_PIECE = 1 << 20
FRAMING = "utc-day"  # the manifest's name for the canonical framing (see DayFrames)


class Readable(Protocol):
    name: str

    def read(self, size: int, /) -> bytes: ...


class HashingReader:
    """Reads a binary file while hashing and counting the compressed bytes."""

    def __init__(self, handle: Readable, *, hashing: bool = True) -> None:
        self.name = handle.name
        self._handle = handle
        self._hashing = hashing
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int) -> bytes:
        data = self._handle.read(size)
        if self._hashing:
            self.sha256.update(data)
        self.bytes += len(data)
        return data


def decompressed_chunks(source: HashingReader | BinaryIO, name: str) -> Iterator[bytes]:
    """Yield decompressed bytes across all frames; raise if the last frame is cut short."""
    context = zstandard.ZstdDecompressor()
    frame = context.decompressobj()
    frame_open = False
    while data := source.read(READ_SIZE):
        while data:
            try:
                out = frame.decompress(data)
            except zstandard.ZstdError as exc:
                raise CorruptFileError(f"{name} is not valid zstd: {exc}") from None
            frame_open = True
            if out:
                yield out
            if not frame.eof:
                break
            data = frame.unused_data
            frame = context.decompressobj()
            frame_open = False
    if frame_open:
        raise CorruptFileError(f"{name} is truncated: its last zstd frame is incomplete")


class HashingWriter:
    """A file wrapper that hashes and counts what is written through it."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes | bytearray) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()


class DbnReader:
    """Splits a decompressed DBN stream into its metadata and its record bytes."""

    def __init__(self, chunks: Iterator[bytes], name: str) -> None:
        self._chunks = chunks
        self._name = name
        self._buffer = bytearray()

    def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._buffer += chunk
        return True

    def metadata(self) -> tuple[Metadata, bytes]:
        from databento_dbn import Metadata

        if not self._fill(PREFIX.size):
            raise CorruptFileError(f"{self._name} is too short to hold a DBN header")
        magic, version, length = PREFIX.unpack_from(self._buffer)
        if magic != DBN_MAGIC:
            raise CorruptFileError(f"{self._name} is not a DBN stream (no DBN magic)")
        if version != DBN_VERSION:
            raise CorruptFileError(f"{self._name} is DBN version {version}; expected 3")
        if not self._fill(PREFIX.size + length):
            raise CorruptFileError(f"{self._name} ends inside its DBN metadata")
        raw = bytes(self._buffer[: PREFIX.size + length])
        del self._buffer[: PREFIX.size + length]
        try:
            return Metadata.decode(raw), raw
        except Exception as exc:  # noqa: BLE001  databento_dbn raises plain ValueError/Exception
            raise CorruptFileError(f"{self._name} has undecodable DBN metadata: {exc}") from None

    def record_size(self) -> int | None:
        """The length of the first record (after `metadata()`); None when there is none."""
        if not self._fill(1):
            return None
        if not self._buffer[0]:
            raise CorruptFileError(f"{self._name} holds a record of length 0")
        return self._buffer[0] * 4

    def record_blocks(self, record_size: int) -> Iterator[memoryview]:
        """Yield whole records, many at a time; fail on a torn record at the end.

        Each view is valid until the next one is requested.
        """
        carry = b""
        head = bytes(self._buffer)
        self._buffer.clear()
        for chunk in itertools.chain([head], self._chunks):
            data = carry + chunk if carry else chunk
            whole = len(data) - len(data) % record_size
            if whole:
                yield memoryview(data)[:whole]
            carry = data[whole:]
        if carry:
            raise CorruptFileError(
                f"{self._name} ends with a partial record ({len(carry)} stray bytes)"
            )


@dataclass(frozen=True)
class StreamSummary:
    """What a full pass over a DBN file established."""

    metadata: Metadata
    metadata_bytes: bytes
    records: int
    first_ts_recv: int | None
    last_ts_recv: int | None
    sha256: str
    bytes: int


class RecordCheck:
    """Checks records block by block: fixed size, ascending ts_recv inside [start, end)."""

    def __init__(self, name: str, record_size: int, start_ns: int, end_ns: int) -> None:
        self.name = name
        self.record_size = record_size
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.records = 0
        self.first: int | None = None
        self.last: int | None = None

    def feed(self, block: memoryview) -> None:
        import numpy as np

        count = len(block) // self.record_size

        def column(dtype: str, offset: int) -> np.ndarray:
            # a strided view of one field across all records: no copy
            return np.ndarray((count,), dtype, block, offset, (self.record_size,))

        if not (column("u1", 0) == self.record_size // 4).all():
            raise CorruptFileError(
                f"{self.name} holds records that are not {self.record_size} bytes long"
            )
        ts = column("<u8", TS_RECV_OFFSET)
        previous = self.last if self.last is not None else self.start_ns
        if ts[0] < previous or (count > 1 and (ts[1:] < ts[:-1]).any()):
            raise CorruptFileError(f"{self.name} has records out of ts_recv order or range")
        if ts[-1] >= self.end_ns:
            raise CorruptFileError(f"{self.name} has records at or after its end")
        if self.first is None:
            self.first = int(ts[0])
        self.last = int(ts[-1])
        self.records += count


def scan(
    path: Path | Readable,
    record_size: int,
    start_ns: int | None = None,
    recode_to: Path | None = None,
) -> StreamSummary:
    """Decode a whole file: metadata, record layout and order, sha256 of the compressed bytes.

    `path` may also be a reader (e.g. of a file still being downloaded). With `recode_to`, the
    stream is also written there in the canonical `PartFile` layout (the header frame, then
    one frame per UTC day), and sha256/bytes describe that file: its records frames can later
    be copied behind another header without decompressing them.
    """
    with contextlib.ExitStack() as stack:
        name, handle = opened(path, stack)
        source = HashingReader(handle, hashing=recode_to is None)  # else the copy is hashed
        reader = DbnReader(decompressed_chunks(source, name), name)
        metadata, raw = reader.metadata()
        end_ns = metadata.end if metadata.end is not None else 2**63 - 1
        check = RecordCheck(
            name, record_size, metadata.start if start_ns is None else start_ns, end_ns
        )
        digest: HashingReader | HashingWriter = source
        frames = None
        if recode_to is not None:
            digest = HashingWriter(stack.enter_context(recode_to.open("wb")))
            digest.write(PartFile.header_frame(raw))
            frames = DayFrames(digest, record_size)
        for block in reader.record_blocks(record_size):
            check.feed(block)  # before framing: DayFrames relies on the order checked here
            if frames is not None:
                frames.write(block)
        if frames is not None:
            frames.close()
    return StreamSummary(
        metadata=metadata,
        metadata_bytes=raw,
        records=check.records,
        first_ts_recv=check.first,
        last_ts_recv=check.last,
        sha256=digest.sha256.hexdigest(),
        bytes=digest.bytes,
    )


def compress_frame(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, write_checksum=True).compress(data)


class DayFrames:
    """Writes records in the canonical framing: one zstd frame per UTC day of their ts_recv.

    A frame depends only on its day's records: a fixed level, a checksum, no content size, and
    the compressor fed in `FRAME_PIECE` pieces from the frame's start however the records
    arrive (zstd's output may depend on how its input is fed). A day without records has no
    frame. So parts cut at UTC midnights concatenate into exactly what one stream of the whole
    range gives, and the same records give the same bytes whatever the chunks were.
    """

    def __init__(self, sink: HashingWriter, record_size: int) -> None:
        self._sink = sink
        self._record_size = record_size
        self._compressor = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, write_checksum=True)
        self._frame: zstandard.ZstdCompressionObj | None = None
        self._day: int | None = None
        self._pending = bytearray()  # the open frame's input not yet fed: less than a piece
        self._out = bytearray()  # compressed bytes not yet handed to the sink

    def write(self, block: bytes | memoryview) -> None:
        """Append whole records, already checked to be in ascending ts_recv order."""
        import numpy as np

        size = self._record_size
        count = len(block) // size
        if not count:
            return
        stamps = np.ndarray((count,), "<u8", block, TS_RECV_OFFSET, (size,))
        days = stamps // np.uint64(NS_PER_DAY)
        starts = [0, *(np.flatnonzero(days[1:] != days[:-1]) + 1).tolist()]
        view = memoryview(block)
        segments = zip(starts, [*starts[1:], count], days[starts].tolist(), strict=True)
        last = len(starts) - 1
        for index, (first, end, day) in enumerate(segments):
            piece = view[first * size : end * size]
            if 0 < index < last and len(piece) < FRAME_PIECE:
                self._whole_day(day, piece)
                continue
            if day != self._day:
                self._begin(day)
            self._feed(piece)
        self._drain()

    def _whole_day(self, day: int, records: memoryview) -> None:
        """A day that starts and ends in one block, under a piece: its frame at once (the same
        calls, so the same bytes, as beginning, feeding and ending it)."""
        self._begin(day)
        frame = self._frame
        self._out += frame.compress(records)
        self._out += frame.flush()
        self._frame = None

    def close(self) -> None:
        """End the last day's frame."""
        self._end()
        self._drain()

    def _begin(self, day: int) -> None:
        if self._day is not None and day < self._day:
            raise RuntimeError("records reached DayFrames out of ts_recv order")
        self._end()
        self._frame = self._compressor.compressobj()  # content size unknown: never written
        self._day = day

    def _feed(self, data: memoryview) -> None:
        pending = self._pending
        if len(pending) + len(data) < FRAME_PIECE:
            pending += data
            return
        take = FRAME_PIECE - len(pending)
        pending += data[:take]
        self._compress(pending)
        pending.clear()
        data = data[take:]
        while len(data) >= FRAME_PIECE:
            self._compress(data[:FRAME_PIECE])
            data = data[FRAME_PIECE:]
        pending += data

    def _compress(self, piece: bytes | bytearray | memoryview) -> None:
        if self._frame is None:
            raise RuntimeError("DayFrames fed outside a frame")
        self._out += self._frame.compress(piece)

    def _end(self) -> None:
        if self._frame is None:
            return
        if self._pending:
            self._compress(self._pending)
            self._pending.clear()
        self._out += self._frame.flush()
        self._frame = None

    def _drain(self) -> None:
        if self._out:
            self._sink.write(self._out)  # hashed and copied into the file's buffer: not kept
            self._out.clear()


def write_day_frames(source: Path, sink: HashingWriter) -> None:
    """Append the records of a DBN file, however it is framed, to `sink` in day frames."""
    with source.open("rb") as handle:
        reader = DbnReader(decompressed_chunks(handle, source.name), source.name)
        reader.metadata()
        record_size = reader.record_size()
        if record_size is None:
            return
        frames = DayFrames(sink, record_size)
        for block in reader.record_blocks(record_size):
            frames.write(block)
        frames.close()


@dataclass(frozen=True)
class PartFile:
    """The canonical layout: the DBN header as one zstd frame, then the records in day frames.

    `scan(recode_to=)` and the split write parts this way and the merge writes final files this
    way, so a part's records frames can be copied behind another header without being
    decompressed, and the final file's bytes depend only on its metadata and records.
    """

    path: Path
    records_offset: int  # where the records frames start

    @staticmethod
    def header_frame(metadata_bytes: bytes) -> bytes:
        return compress_frame(metadata_bytes)

    @classmethod
    def written(cls, path: Path, metadata_bytes: bytes) -> PartFile:
        """A file just written with this header frame."""
        return cls(path, len(cls.header_frame(metadata_bytes)))

    def copy_records(self, sink: HashingWriter) -> None:
        """Append the records frames, as they are, to `sink`."""
        with self.path.open("rb") as source:
            source.seek(self.records_offset)
            while block := source.read(COPY_SIZE):
                sink.write(block)


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


@dataclass(frozen=True)
class HeaderFields:
    """What a merged DBN header holds beyond the request: symbology and resolution status."""

    intervals: dict[str, list[tuple]]  # raw_symbol -> [(start_date, end_date, instrument_id)]
    partial: list[str]
    not_found: list[str]

    def clipped(self, span: TimeRange) -> HeaderFields:
        """The mappings a request for `span` alone would carry: intervals cut to its dates."""
        from datetime import timedelta

        from backend.jobs.core.ranges import ns_to_datetime

        first = ns_to_datetime(span.start_ns).date()
        last = ns_to_datetime(span.end_ns - 1).date() + timedelta(days=1)
        return HeaderFields(
            {
                symbol: [
                    (max(start, first), min(end, last), value)
                    for start, end, value in intervals
                    if start < last and first < end
                ]
                for symbol, intervals in self.intervals.items()
            },
            partial=[],
            not_found=[],
        )


def encode_header(request: RangeRequest, fields: HeaderFields) -> bytes:
    """The DBN metadata a single request for `request.span` would start with."""
    from databento_dbn import Metadata, Schema, SType

    from backend.jobs.core.ranges import STYPE_IN, STYPE_OUT

    mappings = [
        SimpleNamespace(
            raw_symbol=raw_symbol,
            intervals=[
                SimpleNamespace(start_date=start, end_date=end, symbol=value)
                for start, end, value in intervals
            ],
        )
        for raw_symbol, intervals in fields.intervals.items()
    ]
    metadata = Metadata(
        dataset=request.dataset,
        schema=Schema(request.schema),
        start=request.span.start_ns,
        end=request.span.end_ns,
        stype_in=SType(STYPE_IN),
        stype_out=SType(STYPE_OUT),
        symbols=list(request.symbols),
        partial=fields.partial,
        not_found=fields.not_found,
        mappings=mappings,
        limit=None,
        ts_out=False,
    )
    return bytes(metadata.encode())


def request_mismatch(metadata: Metadata, request: RangeRequest) -> str:
    """What in a stream's header differs from the request it answers ("" when nothing)."""
    from backend.jobs.core.ranges import STYPE_IN, STYPE_OUT

    expected = {
        "dataset": (metadata.dataset, request.dataset),
        "schema": (str(metadata.schema), request.schema),
        "symbols": (list(metadata.symbols), list(request.symbols)),
        "start": (metadata.start, request.span.start_ns),
        "end": (metadata.end, request.span.end_ns),
        "stype_in": (str(metadata.stype_in), STYPE_IN),
        "stype_out": (str(metadata.stype_out), STYPE_OUT),
    }
    return ", ".join(
        f"{key} {got!r} != {want!r}" for key, (got, want) in expected.items() if got != want
    )


def opened(source: Path | Readable, stack: contextlib.ExitStack) -> tuple[str, Readable]:
    """(name, binary reader) of a path (opened on `stack`) or of a reader already open."""
    if isinstance(source, Path):
        return source.name, stack.enter_context(source.open("rb"))
    return source.name, source


def read_metadata(source: Path | Readable) -> Metadata:
    """Only the header: cheap, for status and adoption checks."""
    with contextlib.ExitStack() as stack:
        name, handle = opened(source, stack)
        return DbnReader(decompressed_chunks(handle, name), name).metadata()[0]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(READ_SIZE):
            digest.update(block)
    return digest.hexdigest()
