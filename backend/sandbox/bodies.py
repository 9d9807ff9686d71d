"""The timeseries.get_range body of a validated query; batch files reuse it for their periods."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from backend.sandbox.catalog import RECORD_SIZE, Resolution
from backend.sandbox.dbnstream import (
    FrameCache,
    FrameLayout,
    encode_body,
    encode_cached_days,
    encode_metadata,
)
from backend.sandbox.fixtures import Fixture, FixtureKey, fixture_key
from backend.sandbox.records import iter_range_days, iter_range_records


@dataclass(frozen=True)
class RangeQuery:
    """A validated timeseries/metadata query for one dataset, schema and symbol list."""

    dataset: str
    schema: str
    symbols: list[str]
    start_ns: int
    end_ns: int
    limit: int | None
    resolution: Resolution

    @property
    def record_size(self) -> int:
        return RECORD_SIZE[self.schema]


@dataclass(frozen=True)
class BodySettings:
    """The gateway settings a body depends on, captured at one moment.

    A batch job keeps the settings of its submission, so its files do not change when the
    gateway's settings do afterwards.
    """

    records_per_day: int
    frames: FrameLayout
    compression_level: int
    frame_cache: FrameCache | None
    fixtures: Mapping[FixtureKey, Fixture]


def matching_fixture(fixtures: Mapping[FixtureKey, Fixture], query: RangeQuery) -> Fixture | None:
    key = fixture_key(query.dataset, query.schema, query.symbols, query.start_ns, query.end_ns)
    return fixtures.get(key)


def range_body(
    settings: BodySettings, query: RangeQuery, compression: Literal["zstd", "none"]
) -> Iterator[bytes]:
    """The DBN body, in chunks: a matching fixture verbatim, else the metadata then the records
    (from the frame cache when the settings allow it)."""
    fixture = matching_fixture(settings.fixtures, query)
    if fixture is not None:
        return iter([fixture.body if compression == "zstd" else fixture.decompressed()])
    resolution = query.resolution
    metadata = encode_metadata(
        dataset=query.dataset,
        schema=query.schema,
        start_ns=query.start_ns,
        end_ns=query.end_ns,
        limit=query.limit,
        symbols=query.symbols,
        partial=resolution.partial,
        not_found=resolution.not_found,
        mappings=resolution.mappings,
    )
    selection = (query.dataset, query.schema, resolution.mappings)
    window = {
        "start_ns": query.start_ns,
        "end_ns": query.end_ns,
        "records_per_day": settings.records_per_day,
    }
    cacheable = settings.frames == "per_day" and query.limit is None and compression == "zstd"
    if settings.frame_cache is not None and cacheable:
        days = iter_range_days(*selection, **window)
        return encode_cached_days(metadata, days, settings.frame_cache, settings.compression_level)
    records = iter_range_records(*selection, **window, limit=query.limit)
    return encode_body(
        metadata,
        records,
        compression=compression,
        frames=settings.frames,
        level=settings.compression_level,
    )
