"""Datasets the sandbox serves and its raw_symbol -> instrument_id symbology."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

ALL_SYMBOLS = "ALL_SYMBOLS"

# Every schema name the real API accepts (validation), and the two the sandbox has data for.
ALL_SCHEMAS = (
    "mbo",
    "mbp-1",
    "mbp-10",
    "tbbo",
    "trades",
    "bbo-1s",
    "bbo-1m",
    "cbbo-1s",
    "cbbo-1m",
    "cmbp-1",
    "tcbbo",
    "ohlcv-1s",
    "ohlcv-1m",
    "ohlcv-1h",
    "ohlcv-1d",
    "ohlcv-eod",
    "definition",
    "statistics",
    "status",
    "imbalance",
)
DATA_SCHEMAS = ("trades", "tbbo")
RECORD_SIZE = {"trades": 48, "tbbo": 80}

# The response encodings and compressions the API accepts (the sandbox encodes dbn only).
ENCODINGS = ("dbn", "csv", "json")
COMPRESSIONS = ("none", "zstd")

ALL_STYPES = (
    "instrument_id",
    "raw_symbol",
    "smart",
    "continuous",
    "parent",
    "nasdaq_symbol",
    "cms_symbol",
    "isin",
    "us_code",
    "bbg_comp_id",
    "bbg_comp_ticker",
    "figi",
    "figi_ticker",
)

_XNAS_SCHEMAS = (
    "mbo",
    "mbp-1",
    "mbp-10",
    "tbbo",
    "trades",
    "bbo-1s",
    "bbo-1m",
    "ohlcv-1s",
    "ohlcv-1m",
    "ohlcv-1h",
    "ohlcv-1d",
    "definition",
    "statistics",
    "status",
    "imbalance",
)
_EQUS_MINI_SCHEMAS = (
    "mbp-1",
    "tbbo",
    "trades",
    "bbo-1s",
    "bbo-1m",
    "ohlcv-1s",
    "ohlcv-1m",
    "ohlcv-1h",
    "ohlcv-1d",
    "definition",
)


@dataclass(frozen=True)
class DatasetInfo:
    code: str
    publisher_id: int
    schemas: tuple[str, ...]
    # None: the gateway's configurable `available_start`.
    fixed_start: date | None = None
    # EQUS.MINI is derived and carries neither venue sequence numbers nor ts_in_delta.
    has_venue_sequence: bool = True


DATASETS: dict[str, DatasetInfo] = {
    "EQUS.MINI": DatasetInfo(
        "EQUS.MINI", 95, _EQUS_MINI_SCHEMAS, date(2023, 3, 28), has_venue_sequence=False
    ),
    "XNAS.ITCH": DatasetInfo("XNAS.ITCH", 2, _XNAS_SCHEMAS),
}


@dataclass(frozen=True, order=True)
class SymbolInterval:
    """`raw_symbol` maps to `instrument_id` on dates d0 (inclusive) to d1 (exclusive)."""

    d0: date
    d1: date
    instrument_id: int


@dataclass
class Resolution:
    """The outcome of resolving requested raw symbols over [d0, d1)."""

    mappings: dict[str, list[SymbolInterval]] = field(default_factory=dict)
    partial: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)


def day_conditions(first: date, end: date, degraded_days: Collection[date]) -> list[dict[str, str]]:
    """metadata.get_dataset_condition's entries for the days [first, end)."""
    conditions = []
    day = first
    while day < end:
        condition = "degraded" if day in degraded_days else "available"
        conditions.append(
            {"date": day.isoformat(), "condition": condition, "last_modified_date": day.isoformat()}
        )
        day += timedelta(days=1)
    return conditions


# Open-ended listing bounds: intervals are always clipped to the request's dates.
_LISTED_FOREVER_FROM = date(1990, 1, 1)
_LISTED_FOREVER_UNTIL = date(2100, 1, 1)


class SymbolCatalog:
    """raw_symbol -> instrument_id intervals per dataset."""

    def __init__(self) -> None:
        self._intervals: dict[tuple[str, str], list[SymbolInterval]] = {}

    def copy(self) -> SymbolCatalog:
        clone = SymbolCatalog()
        clone._intervals = {key: list(value) for key, value in self._intervals.items()}
        return clone

    def set_symbol(
        self, dataset: str, symbol: str, intervals: Iterable[tuple[date, date, int]]
    ) -> None:
        """Replace `symbol`'s intervals in `dataset`."""
        parsed = sorted(SymbolInterval(d0, d1, int(iid)) for d0, d1, iid in intervals)
        for interval in parsed:
            if interval.d0 >= interval.d1:
                raise ValueError(f"empty interval {interval} for {symbol}")
        for earlier, later in itertools.pairwise(parsed):
            if later.d0 < earlier.d1:
                raise ValueError(f"overlapping intervals for {symbol}: {earlier}, {later}")
        self._intervals[(dataset, symbol)] = _coalesce(parsed)

    def extend(
        self, dataset: str, symbol: str, intervals: Iterable[tuple[date, date, int]]
    ) -> None:
        """Add intervals to `symbol`; overlaps must agree on the instrument_id."""
        existing = self._intervals.get((dataset, symbol), [])
        merged: list[tuple[date, date, int]] = [(i.d0, i.d1, i.instrument_id) for i in existing]
        for d0, d1, iid in intervals:
            overlapping = [i for i in existing if i.d0 < d1 and d0 < i.d1]
            if any(i.instrument_id != iid for i in overlapping):
                raise ValueError(f"{symbol} already maps to another instrument_id in [{d0}, {d1})")
            merged.extend(_subtract((d0, d1, iid), overlapping))
        self.set_symbol(dataset, symbol, merged)

    def symbols(self, dataset: str) -> list[str]:
        return sorted(symbol for ds, symbol in self._intervals if ds == dataset)

    def clipped(self, dataset: str, symbol: str, d0: date, d1: date) -> list[SymbolInterval]:
        """`symbol`'s maximal intervals intersected with [d0, d1)."""
        return [
            SymbolInterval(max(i.d0, d0), min(i.d1, d1), i.instrument_id)
            for i in self._intervals.get((dataset, symbol), [])
            if i.d0 < d1 and d0 < i.d1
        ]

    def resolve(self, dataset: str, symbols: Sequence[str], d0: date, d1: date) -> Resolution:
        wanted = self.symbols(dataset) if list(symbols) == [ALL_SYMBOLS] else symbols
        resolution = Resolution()
        for symbol in wanted:
            intervals = self.clipped(dataset, symbol, d0, d1)
            if not intervals:
                resolution.not_found.append(symbol)
                continue
            resolution.mappings[symbol] = intervals
            if not _covers(intervals, d0, d1):
                resolution.partial.append(symbol)
        return resolution


def resolve_answer(
    resolution: Resolution,
    *,
    symbols: Sequence[str],
    stype_in: str,
    stype_out: str,
    start_date: date,
    end_date: date,
) -> dict[str, Any]:
    """The symbology.resolve JSON of a resolution (a batch job's symbology.json too)."""
    if not resolution.mappings:
        status, message = 2, "Not found"
    elif resolution.partial or resolution.not_found:
        status, message = 1, "Partially resolved"
    else:
        status, message = 0, "OK"
    result = {
        symbol: [
            {"d0": i.d0.isoformat(), "d1": i.d1.isoformat(), "s": str(i.instrument_id)}
            for i in intervals
        ]
        for symbol, intervals in resolution.mappings.items()
    }
    return {
        "result": result,
        "symbols": list(symbols),
        "stype_in": stype_in,
        "stype_out": stype_out,
        "start_date": start_date.isoformat(),
        "end_date": end_date.isoformat(),
        "partial": resolution.partial,
        "not_found": resolution.not_found,
        "message": message,
        "status": status,
    }


def _coalesce(intervals: list[SymbolInterval]) -> list[SymbolInterval]:
    merged: list[SymbolInterval] = []
    for interval in intervals:
        last = merged[-1] if merged else None
        if last and last.d1 == interval.d0 and last.instrument_id == interval.instrument_id:
            merged[-1] = SymbolInterval(last.d0, interval.d1, last.instrument_id)
        else:
            merged.append(interval)
    return merged


def _subtract(
    new: tuple[date, date, int], existing: list[SymbolInterval]
) -> list[tuple[date, date, int]]:
    """The parts of `new` not already covered by `existing`."""
    pieces = [new]
    for cover in existing:
        remaining = []
        for d0, d1, iid in pieces:
            if cover.d1 <= d0 or d1 <= cover.d0:
                remaining.append((d0, d1, iid))
                continue
            if d0 < cover.d0:
                remaining.append((d0, cover.d0, iid))
            if cover.d1 < d1:
                remaining.append((cover.d1, d1, iid))
        pieces = remaining
    return pieces


def _covers(intervals: list[SymbolInterval], d0: date, d1: date) -> bool:
    if intervals[0].d0 != d0 or intervals[-1].d1 != d1:
        return False
    return all(a.d1 == b.d0 for a, b in itertools.pairwise(intervals))


def default_catalog() -> SymbolCatalog:
    """AAPL, MSFT (instrument_id change on 2023-07-03), BRK.B and NEWCO (listed 2023-06-12)."""
    catalog = SymbolCatalog()
    for dataset in DATASETS:
        catalog.set_symbol(dataset, "AAPL", [(_LISTED_FOREVER_FROM, _LISTED_FOREVER_UNTIL, 38)])
        catalog.set_symbol(
            dataset,
            "MSFT",
            [
                (_LISTED_FOREVER_FROM, date(2023, 7, 3), 7152),
                (date(2023, 7, 3), _LISTED_FOREVER_UNTIL, 7153),
            ],
        )
        catalog.set_symbol(dataset, "BRK.B", [(_LISTED_FOREVER_FROM, _LISTED_FOREVER_UNTIL, 2110)])
        catalog.set_symbol(dataset, "NEWCO", [(date(2023, 6, 12), _LISTED_FOREVER_UNTIL, 9001)])
    return catalog
