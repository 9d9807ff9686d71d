"""Real DBN samples served verbatim when a request matches their metadata."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import zstandard
from databento_dbn import Metadata

from backend.sandbox.catalog import RECORD_SIZE

_DBN_PREFIX_BYTES = 8  # b"DBN" + version + u32 metadata length
_READ_CHUNK = 1 << 20

FixtureKey = tuple[str, str, tuple[str, ...], int, int]


@dataclass(frozen=True)
class Fixture:
    path: Path
    body: bytes
    dataset: str
    schema: str
    symbols: tuple[str, ...]
    start_ns: int
    end_ns: int
    record_count: int
    record_size: int
    # raw_symbol -> [(d0, d1, instrument_id)] from the file's symbology mappings
    mappings: dict[str, list[tuple[date, date, int]]]

    def decompressed(self) -> bytes:
        reader = zstandard.ZstdDecompressor().stream_reader(self.body, read_across_frames=True)
        return reader.read()

    @property
    def key(self) -> FixtureKey:
        return fixture_key(self.dataset, self.schema, self.symbols, self.start_ns, self.end_ns)


def fixture_key(
    dataset: str, schema: str, symbols: tuple[str, ...] | list[str], start_ns: int, end_ns: int
) -> FixtureKey:
    return (dataset, schema, tuple(symbols), start_ns, end_ns)


def load_fixture(path: Path | str) -> Fixture:
    """Read a zstd DBN file's metadata and count its records (schema must be trades or tbbo)."""
    path = Path(path)
    body = path.read_bytes()
    reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
    prefix = reader.read(_DBN_PREFIX_BYTES)
    if len(prefix) != _DBN_PREFIX_BYTES or prefix[:3] != b"DBN":
        raise ValueError(f"{path} is not a zstd-compressed DBN stream")
    (metadata_len,) = struct.unpack_from("<I", prefix, 4)
    metadata = Metadata.decode(prefix + reader.read(metadata_len))
    schema = str(metadata.schema)
    if schema not in RECORD_SIZE:
        raise ValueError(f"{path}: schema {schema} is not served by the sandbox")
    record_bytes = 0
    while chunk := reader.read(_READ_CHUNK):
        record_bytes += len(chunk)
    mappings = {
        symbol: [
            (interval["start_date"], interval["end_date"], int(interval["symbol"]))
            for interval in intervals
        ]
        for symbol, intervals in metadata.mappings.items()
    }
    return Fixture(
        path=path,
        body=body,
        dataset=metadata.dataset,
        schema=schema,
        symbols=tuple(metadata.symbols),
        start_ns=metadata.start,
        end_ns=metadata.end,
        record_count=record_bytes // RECORD_SIZE[schema],
        record_size=RECORD_SIZE[schema],
        mappings=mappings,
    )
