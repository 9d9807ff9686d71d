"""DBN v3 response bodies: the real server's metadata header, then zstd-compressed records."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import numpy as np
import zstandard
from databento_dbn import Metadata, Schema, SType

from backend.sandbox.catalog import SymbolInterval
from backend.sandbox.records import DayKey

FrameLayout = Literal["single", "per_day"]
OUTPUT_CHUNK_BYTES = 128 * 1024


@dataclass(frozen=True)
class _Interval:
    start_date: date
    end_date: date
    symbol: str


@dataclass(frozen=True)
class _SymbolMapping:
    raw_symbol: str
    intervals: list[_Interval]


def encode_metadata(
    *,
    dataset: str,
    schema: str,
    start_ns: int,
    end_ns: int,
    limit: int | None,
    symbols: Sequence[str],
    partial: Sequence[str],
    not_found: Sequence[str],
    mappings: dict[str, list[SymbolInterval]],
) -> bytes:
    """The DBN v3 metadata header, filled like the real server does for raw_symbol requests."""
    metadata = Metadata(
        dataset=dataset,
        start=start_ns,
        end=end_ns,
        schema=Schema(schema),
        stype_in=SType.RAW_SYMBOL,
        stype_out=SType.INSTRUMENT_ID,
        symbols=list(symbols),
        partial=list(partial),
        not_found=list(not_found),
        mappings=[
            _SymbolMapping(
                raw_symbol=symbol,
                intervals=[_Interval(i.d0, i.d1, str(i.instrument_id)) for i in intervals],
            )
            for symbol, intervals in mappings.items()
        ],
        limit=limit,
        ts_out=False,
    )
    return bytes(metadata.encode())


class FrameCache:
    """Compressed whole-day frames kept across requests, bounded by bytes (per_day layout).

    A real server's CPU is not on the client's machine; on a 2-core box the stand-in's
    generation and zstd work would otherwise compete with the client it is measured against.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: OrderedDict[DayKey, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def frame(self, key: DayKey | None, build: Callable[[], np.ndarray], compressor: Any) -> bytes:
        if key is not None:
            with self._lock:
                cached = self._frames.get(key)
                if cached is not None:
                    self._frames.move_to_end(key)
                    return cached
        records = build()
        frame = compressor.compress(records.data) if len(records) else b""
        if key is not None:
            with self._lock:
                self._frames[key] = frame
                self._bytes += len(frame)
                while self._bytes > self.max_bytes and self._frames:
                    self._bytes -= len(self._frames.popitem(last=False)[1])
        return frame


def encode_cached_days(
    metadata: bytes,
    days: Iterable[tuple[DayKey | None, Callable[[], np.ndarray]]],
    cache: FrameCache,
    level: int = 1,
) -> Iterator[bytes]:
    """The per_day layout, whole days served from `cache`: metadata frame, then day frames."""
    compressor = zstandard.ZstdCompressor(
        level=level, write_checksum=True, write_content_size=False
    )
    yield compressor.compress(metadata)
    for key, build in days:
        frame = cache.frame(key, build, compressor)
        if frame:
            yield frame


def encode_body(
    metadata: bytes,
    day_records: Iterable[np.ndarray],
    *,
    compression: Literal["zstd", "none"] = "zstd",
    frames: FrameLayout = "single",
    level: int = 1,
) -> Iterator[bytes]:
    """Yield the response body in chunks, holding at most one day of records in memory.

    "single" writes one zstd frame like the real server (checksum, no content size); "per_day"
    writes the metadata frame then one frame per day, a valid multi-frame zstd stream.
    """
    if compression == "none":
        yield metadata
        for records in day_records:
            yield records.tobytes()
        return
    compressor = zstandard.ZstdCompressor(
        level=level, write_checksum=True, write_content_size=False
    )
    if frames == "per_day":
        yield compressor.compress(metadata)
        for records in day_records:
            chunker = compressor.chunker(chunk_size=OUTPUT_CHUNK_BYTES)
            yield from chunker.compress(records.data)
            yield from chunker.finish()
        return
    chunker = compressor.chunker(chunk_size=OUTPUT_CHUNK_BYTES)
    yield from chunker.compress(metadata)
    for records in day_records:
        yield from chunker.compress(records.data)
    yield from chunker.finish()
