"""Deterministic synthetic TRADES (TradeMsg) and TBBO (MBP1Msg) records, one trading day at a time.

Records are built as numpy structured arrays whose layout is byte-identical to DBN v3. The
trade stream of a (dataset, symbol, day) is shared by both schemas, like the real feed where
every trade has a TBBO record; TBBO adds the book before the trade.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, timedelta

import numpy as np

from backend.sandbox.catalog import (
    DATA_SCHEMAS,
    DATASETS,
    SymbolCatalog,
    SymbolInterval,
    default_catalog,
)
from backend.sandbox.timestamps import NS_PER_SECOND, ceil_date, date_to_ns, ns_to_date

SESSION_OPEN_NS = (13 * 3600 + 30 * 60) * NS_PER_SECOND
SESSION_CLOSE_NS = 20 * 3600 * NS_PER_SECOND
_SESSION_NS = SESSION_CLOSE_NS - SESSION_OPEN_NS

_TRADE_FIELDS = [
    ("length", "u1", 0),
    ("rtype", "u1", 1),
    ("publisher_id", "<u2", 2),
    ("instrument_id", "<u4", 4),
    ("ts_event", "<u8", 8),
    ("price", "<i8", 16),
    ("size", "<u4", 24),
    ("action", "S1", 28),
    ("side", "S1", 29),
    ("flags", "u1", 30),
    ("depth", "u1", 31),
    ("ts_recv", "<u8", 32),
    ("ts_in_delta", "<i4", 40),
    ("sequence", "<u4", 44),
]
_BOOK_FIELDS = [
    ("bid_px_00", "<i8", 48),
    ("ask_px_00", "<i8", 56),
    ("bid_sz_00", "<u4", 64),
    ("ask_sz_00", "<u4", 68),
    ("bid_ct_00", "<u4", 72),
    ("ask_ct_00", "<u4", 76),
]


def _record_dtype(fields: list[tuple[str, str, int]], itemsize: int) -> np.dtype:
    return np.dtype(
        {
            "names": [name for name, _, _ in fields],
            "formats": [fmt for _, fmt, _ in fields],
            "offsets": [offset for _, _, offset in fields],
            "itemsize": itemsize,
        }
    )


TRADE_DTYPE = _record_dtype(_TRADE_FIELDS, 48)
MBP1_DTYPE = _record_dtype([*_TRADE_FIELDS, *_BOOK_FIELDS], 80)
RECORD_DTYPES = {"trades": TRADE_DTYPE, "tbbo": MBP1_DTYPE}
_RTYPES = {"trades": 0x00, "tbbo": 0x01}  # MBP_0, MBP_1

FLAGS_LAST_PUBLISHER_SPECIFIC = 130
_TICK = 10_000_000  # $0.01 in 1e-9 units
_U64 = np.uint64


def _u64_table(values: str) -> np.ndarray:
    return np.array([int(value) for value in values.split()], dtype=np.uint64)


# Trade word 3 (size | action | side | flags | depth) for each of 256 random byte values:
# 5 bits pick a size (round lots dominate), 3 bits the aggressor side (mostly A/B, some N).
_TRADE_SIZES = _u64_table(
    "100 100 100 100 100 100 200 200 300 400 500 1000 1 1 2 3 "
    "5 8 10 10 15 20 25 30 40 50 50 60 75 80 150 250"
)
_SIDES = np.array([ord(c) for c in "ABABABAN"], dtype=np.uint64)
_TRADE_WORD3 = (
    np.tile(_TRADE_SIZES, 8)
    | (_U64(ord("T")) << _U64(32))
    | (np.repeat(_SIDES, 32) << _U64(40))
    | (_U64(FLAGS_LAST_PUBLISHER_SPECIFIC) << _U64(48))
)
_SIDE_OF_WORD3 = np.repeat(_SIDES, 32)
_BOOK_SIZES = _u64_table(
    "100 100 200 200 300 300 400 500 600 700 800 900 1000 1200 1500 2000 "
    "1 5 10 20 30 40 50 60 80 150 250 350 450 2500 3000 5000"
)


def is_trading_day(day: date) -> bool:
    """Monday to Friday: the sandbox has no holiday calendar."""
    return day.weekday() < 5


def _seed(dataset: str, symbol: str, day: date, records_per_day: int) -> int:
    text = f"{dataset}\x1f{symbol}\x1f{day.isoformat()}\x1f{records_per_day}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "little")


def _symbol_base_cents(dataset: str, symbol: str) -> int:
    """A stable per-symbol price level between $50 and $500."""
    digest = hashlib.sha256(f"{dataset}\x1f{symbol}".encode()).digest()
    return 5_000 + int.from_bytes(digest[:4], "little") % 45_000


@functools.lru_cache(maxsize=8)
def _arange(n: int) -> np.ndarray:
    values = np.arange(n, dtype=np.uint64)
    values.flags.writeable = False
    return values


def _trade_words(
    dataset: str, symbol: str, day: date, n: int
) -> tuple[np.random.Generator, np.ndarray]:
    """The day's generator and its n+1 random words (the last only closes the session)."""
    rng = np.random.Generator(np.random.PCG64(_seed(dataset, symbol, day, n)))
    return rng, rng.bit_generator.random_raw(n + 1)


def _session_ts_recv(words: np.ndarray, day: date, n: int) -> np.ndarray:
    """n strictly ascending ts_recv inside [13:30, 20:00) UTC of `day`."""
    gaps = (words >> _U64(40)) + _U64(1)
    offsets = np.cumsum(gaps, dtype=np.uint64).astype(np.float64)
    # floor(scaled) is non-decreasing and < session - n; adding 0..n-1 makes it strictly ascending.
    offsets *= (_SESSION_NS - n) / offsets[n]
    ts = offsets[:n].astype(np.uint64)
    ts += _arange(n)
    ts += _U64(date_to_ns(day) + SESSION_OPEN_NS)
    return ts


def day_ts_recv(dataset: str, symbol: str, day: date, records_per_day: int) -> np.ndarray:
    """The ts_recv of the day's records without building them (for counting)."""
    if not is_trading_day(day) or records_per_day <= 0:
        return np.empty(0, dtype=np.uint64)
    _, words = _trade_words(dataset, symbol, day, records_per_day)
    return _session_ts_recv(words, day, records_per_day)


def _build_day(
    dataset: str, symbol: str, schema: str, day: date, *, n: int, instrument_id: int
) -> np.ndarray:
    info = DATASETS[dataset]
    dtype = RECORD_DTYPES[schema]
    rng, all_words = _trade_words(dataset, symbol, day, n)
    ts_recv = _session_ts_recv(all_words, day, n)
    words = all_words[:n]
    day_shift_cents = int(rng.integers(-500, 501))

    records = np.empty(n, dtype=dtype)
    out = records.view(np.uint64).reshape(n, dtype.itemsize // 8)
    out[:, 0] = (
        (dtype.itemsize // 4)
        | (_RTYPES[schema] << 8)
        | (info.publisher_id << 16)
        | (instrument_id << 32)
    )
    latency = (words >> _U64(10)) & _U64(0x7FF)
    latency += _U64(10_000)
    out[:, 1] = ts_recv - latency
    steps = ((words >> _U64(8)) & _U64(1)).view(np.int64) - ((words >> _U64(9)) & _U64(1)).view(
        np.int64
    )
    cents = np.cumsum(steps)
    cents += _symbol_base_cents(dataset, symbol) + day_shift_cents
    np.maximum(cents, 100, out=cents)
    out[:, 2] = (cents * _TICK).view(np.uint64)
    word3_index = words & _U64(0xFF)
    out[:, 3] = np.take(_TRADE_WORD3, word3_index)
    out[:, 4] = ts_recv
    if info.has_venue_sequence:
        increments = (words >> _U64(21)) & _U64(0x3FF)
        increments += _U64(1)
        sequence = np.cumsum(increments)
        sequence += _U64(100_000)
        out[:, 5] = latency | (sequence << _U64(32))
    else:
        out[:, 5] = 0
    if schema == "tbbo":
        _fill_book(
            out, rng.bit_generator.random_raw(n), cents, word3_index, info.has_venue_sequence
        )
    records.flags.writeable = False
    return records


def _fill_book(
    out: np.ndarray,
    words: np.ndarray,
    trade_cents: np.ndarray,
    word3_index: np.ndarray,
    with_counts: bool,
) -> None:
    """The best bid/offer before each trade: buys lift the offer, sells hit the bid."""
    spread = ((words & _U64(3)) + _U64(1)).view(np.int64)
    side = np.take(_SIDE_OF_WORD3, word3_index)
    bid = trade_cents - spread * (side != ord("A"))
    ask = trade_cents + spread * (side != ord("B"))
    np.maximum(bid, 1, out=bid)
    out[:, 6] = (bid * _TICK).view(np.uint64)
    out[:, 7] = (ask * _TICK).view(np.uint64)
    out[:, 8] = np.take(_BOOK_SIZES, (words >> _U64(2)) & _U64(31)) | (
        np.take(_BOOK_SIZES, (words >> _U64(7)) & _U64(31)) << _U64(32)
    )
    if with_counts:
        bid_ct = ((words >> _U64(12)) & _U64(7)) + _U64(1)
        ask_ct = ((words >> _U64(15)) & _U64(7)) + _U64(1)
        out[:, 9] = bid_ct | (ask_ct << _U64(32))
    else:
        out[:, 9] = 0


class _DayCache:
    """A small LRU of generated days, bounded by bytes (retries re-stream the same days)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: np.ndarray) -> None:
        if value.nbytes > self._max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self._max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes


_day_cache = _DayCache(max_bytes=64 * 1024 * 1024)


@functools.cache
def _default_catalog() -> SymbolCatalog:
    return default_catalog()


def generate_day(
    dataset: str,
    symbol: str,
    schema: str,
    day: date,
    records_per_day: int,
    *,
    instrument_id: int | None = None,
) -> np.ndarray:
    """The day's records (read-only structured array, ascending ts_recv).

    `instrument_id` None looks the symbol up in the default catalog; unlisted -> no records.
    """
    if schema not in DATA_SCHEMAS:
        raise ValueError(f"no synthetic data for schema {schema!r}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}")
    if instrument_id is None:
        listed = _default_catalog().clipped(dataset, symbol, day, day + timedelta(days=1))
        if not listed:
            return np.empty(0, dtype=RECORD_DTYPES[schema])
        instrument_id = listed[0].instrument_id
    if not is_trading_day(day) or records_per_day <= 0:
        return np.empty(0, dtype=RECORD_DTYPES[schema])
    key = (dataset, symbol, schema, day, records_per_day, instrument_id)
    records = _day_cache.get(key)
    if records is None:
        records = _build_day(
            dataset, symbol, schema, day, n=records_per_day, instrument_id=instrument_id
        )
        _day_cache.put(key, records)
    return records


def day_record_bytes(
    dataset: str,
    symbol: str,
    schema: str,
    day: date,
    records_per_day: int,
    *,
    instrument_id: int | None = None,
) -> bytes:
    """The day's records as DBN v3 record bytes."""
    records = generate_day(
        dataset, symbol, schema, day, records_per_day, instrument_id=instrument_id
    )
    return records.tobytes()


def _days(d0: date, d1: date) -> Iterator[date]:
    for ordinal in range(d0.toordinal(), d1.toordinal()):
        yield date.fromordinal(ordinal)


def _day_slice(ts_recv: np.ndarray, day: date, start_ns: int, end_ns: int) -> slice:
    """Index range of ts_recv in [start_ns, end_ns) (whole day when the session is inside)."""
    day_ns = date_to_ns(day)
    if start_ns <= day_ns + SESSION_OPEN_NS and day_ns + SESSION_CLOSE_NS <= end_ns:
        return slice(0, len(ts_recv))
    lo = int(np.searchsorted(ts_recv, np.uint64(max(start_ns, 0)), side="left"))
    hi = int(np.searchsorted(ts_recv, np.uint64(max(end_ns, 0)), side="left"))
    return slice(lo, max(lo, hi))


def count_records(
    dataset: str,
    symbol: str,
    intervals: Iterable[SymbolInterval],
    *,
    start_ns: int,
    end_ns: int,
    records_per_day: int,
) -> int:
    """Records of `symbol` with start_ns <= ts_recv < end_ns on the days it is listed."""
    total = 0
    first, last = ns_to_date(start_ns), ceil_date(end_ns)
    for interval in intervals:
        for day in _days(max(interval.d0, first), min(interval.d1, last)):
            if not is_trading_day(day) or records_per_day <= 0:
                continue
            day_ns = date_to_ns(day)
            session_open, session_close = day_ns + SESSION_OPEN_NS, day_ns + SESSION_CLOSE_NS
            if start_ns <= session_open and session_close <= end_ns:
                total += records_per_day
            elif session_open < end_ns and start_ns < session_close:
                window = _day_slice(
                    day_ts_recv(dataset, symbol, day, records_per_day), day, start_ns, end_ns
                )
                total += window.stop - window.start
    return total


def expected_records(  # noqa: PLR0917 - positional by contract, callers pass *range
    dataset: str,
    symbol: str,
    schema: str,
    start_ns: int,
    end_ns: int,
    records_per_day: int,
) -> int:
    """How many records the sandbox serves for one symbol of the default catalog (no generation)."""
    if schema not in DATA_SCHEMAS:
        raise ValueError(f"no synthetic data for schema {schema!r}")
    intervals = _default_catalog().clipped(dataset, symbol, ns_to_date(start_ns), ceil_date(end_ns))
    return count_records(
        dataset,
        symbol,
        intervals,
        start_ns=start_ns,
        end_ns=end_ns,
        records_per_day=records_per_day,
    )


def iter_range_records(
    dataset: str,
    schema: str,
    mappings: dict[str, list[SymbolInterval]],
    *,
    start_ns: int,
    end_ns: int,
    records_per_day: int,
    limit: int | None = None,
) -> Iterator[np.ndarray]:
    """Per day, the records of all mapped symbols in [start_ns, end_ns), merged by ts_recv."""
    remaining = limit
    for _, build in iter_range_days(
        dataset, schema, mappings, start_ns=start_ns, end_ns=end_ns, records_per_day=records_per_day
    ):
        records = build()
        if not len(records):
            continue
        if remaining is not None:
            records = records[:remaining]
            remaining -= len(records)
        yield records
        if remaining == 0:
            return


DayKey = tuple[str, str, str, date, int, int]


def iter_range_days(
    dataset: str,
    schema: str,
    mappings: dict[str, list[SymbolInterval]],
    *,
    start_ns: int,
    end_ns: int,
    records_per_day: int,
) -> Iterator[tuple[DayKey | None, Callable[[], np.ndarray]]]:
    """Per session day, a function building its records in [start_ns, end_ns), and a key naming
    them when they are one symbol's whole day (so a cache can skip building them)."""
    for day, listed in iter_session_days(mappings, start_ns=start_ns, end_ns=end_ns):
        day_ns = date_to_ns(day)
        whole = start_ns <= day_ns + SESSION_OPEN_NS and day_ns + SESSION_CLOSE_NS <= end_ns
        key = None
        if whole and len(listed) == 1:
            symbol, instrument_id = listed[0]
            key = (dataset, symbol, schema, day, records_per_day, instrument_id)
        yield (
            key,
            functools.partial(
                _day_records,
                dataset,
                schema,
                listed,
                day=day,
                span=(start_ns, end_ns),
                records_per_day=records_per_day,
            ),
        )


def iter_session_days(
    mappings: dict[str, list[SymbolInterval]], *, start_ns: int, end_ns: int
) -> Iterator[tuple[date, list[tuple[str, int]]]]:
    """The session days of [start_ns, end_ns), each with its listed (symbol, instrument_id).

    A session day is a UTC date the range touches that is a trading day (`is_trading_day`:
    Monday to Friday, no holiday calendar) on which at least one mapped symbol is listed.
    Only session days can hold records, whatever the time of day the range covers.
    """
    for day in _days(ns_to_date(start_ns), ceil_date(end_ns)):
        if not is_trading_day(day):
            continue
        listed = list(_listed_on(mappings, day))
        if listed:
            yield day, listed


def _day_records(
    dataset: str,
    schema: str,
    listed: list[tuple[str, int]],
    *,
    day: date,
    span: tuple[int, int],
    records_per_day: int,
) -> np.ndarray:
    start_ns, end_ns = span
    parts = []
    for symbol, instrument_id in listed:
        records = generate_day(
            dataset, symbol, schema, day, records_per_day, instrument_id=instrument_id
        )
        window = records[_day_slice(records["ts_recv"], day, start_ns, end_ns)]
        if len(window):
            parts.append(window)
    if not parts:
        return np.empty(0, dtype=RECORD_DTYPES[schema])
    return parts[0] if len(parts) == 1 else _merge_by_ts_recv(parts)


def _listed_on(mappings: dict[str, list[SymbolInterval]], day: date) -> Iterator[tuple[str, int]]:
    for symbol, intervals in mappings.items():
        for interval in intervals:
            if interval.d0 <= day < interval.d1:
                yield symbol, interval.instrument_id
                break


def _merge_by_ts_recv(parts: Sequence[np.ndarray]) -> np.ndarray:
    # Joined as raw rows: concatenating structured arrays promotes their fields once per part,
    # which dominates a request for thousands of symbols.
    dtype = parts[0].dtype
    rows = np.dtype((np.void, dtype.itemsize))
    merged = np.concatenate([part.view(rows) for part in parts]).view(dtype)
    return merged[np.argsort(merged["ts_recv"], kind="stable")]
