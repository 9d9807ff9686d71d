"""Pure planning: validated symbol, year, products and dataset -> clamped ranges -> chunks.

No I/O here, so every rule is tested without a network.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal, get_args

from backend.jobs.errors import InvalidInputError

NS_PER_SECOND = 1_000_000_000
MIN_YEAR, MAX_YEAR = 1970, 9999
MAX_SYMBOL_LENGTH = 70  # DBN v3 stores symbols as 71-byte C strings
DATASET_PATTERN = re.compile(r"^[A-Z0-9]{2,16}\.[A-Z0-9]{2,16}$")

STYPE_IN = "raw_symbol"  # symbols are asked as the venue lists them
STYPE_OUT = "instrument_id"  # records carry instrument ids, mapped back in the DBN header

Chunking = Literal["month", "week", "day", "auto"]
CHUNKINGS: tuple[str, ...] = get_args(Chunking)
Unit = Literal["year", "month", "week", "day"]  # what `auto` resolves to
# `auto` (the default): calendar chunks of about this many billable (uncompressed) bytes per
# request, so an illiquid symbol-year is one request and a cut stream of a liquid one costs
# little. Measured (docs/benchmarks.md, "Request size"): a request costs one latency round plus
# its transfer; at 0.25 s latency and 10-20 MB/s of zstd (~2.3x) per connection, 128 MiB keeps
# the latency under 4-8% of each request's time (256 MiB: 2-4%, 64 MiB: 8-15%), and a failed
# request re-bills at most its own chunk (about this size, or one day when a day is larger).
AUTO_REQUEST_BYTES = 128 * 2**20


@dataclass(frozen=True)
class Product:
    name: str  # file stem and log field: TRADES
    schema: str  # Databento schema: trades
    record_size: int  # bytes per record in DBN v3


PRODUCTS = {
    "TRADES": Product("TRADES", "trades", 48),
    "TBBO": Product("TBBO", "tbbo", 80),
}


@dataclass(frozen=True, order=True)
class TimeRange:
    """Half-open [start, end) in UTC nanoseconds, the way Databento filters on ts_recv."""

    start_ns: int
    end_ns: int

    @property
    def start(self) -> str:
        return format_ns(self.start_ns)

    @property
    def end(self) -> str:
        return format_ns(self.end_ns)

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


def counted(count: int, noun: str, plural: str = "") -> str:
    """`1 symbol`, `2 symbols`, `1,000 symbols`: a count and its noun, in the right number."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def parse_chunking(text: str, flag: str = "--chunk") -> Chunking:
    """`auto`, `year`, `month`, `week` or `day`, case-insensitive."""
    value = text.strip().lower()
    if value not in CHUNKINGS:
        raise InvalidInputError(f"{flag} {text!r} is not one of {', '.join(CHUNKINGS)}")
    return value  # type: ignore[return-value]  checked above


def parse_products(text: str) -> tuple[Product, ...]:
    names = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in PRODUCTS]
    if not names or unknown:
        problem = f"names an unknown product ({', '.join(unknown)})" if unknown else "is empty"
        raise InvalidInputError(
            f"--products {text!r} {problem}: use a comma-separated list of "
            f"{', '.join(PRODUCTS).lower()}, e.g. --products trades"
        )
    return tuple(PRODUCTS[name] for name in dict.fromkeys(names))


def normalize_symbol(raw: str) -> str:
    """Upper-case and strip like the SDK does; refuse what could escape the cache folder."""
    symbol = raw.strip().upper()
    fix = "pass a ticker such as AAPL or BRK.B"
    if not symbol:
        raise InvalidInputError(f"symbol is empty: {fix}")
    if len(symbol) > MAX_SYMBOL_LENGTH:  # first: a long line of junk is not echoed
        raise InvalidInputError(f"symbol is longer than {MAX_SYMBOL_LENGTH} characters: {fix}")
    if any(ord(char) < 32 or ord(char) == 127 for char in symbol):
        raise InvalidInputError(f"symbol {symbol!r} contains control characters: {fix}")
    if not symbol.isascii():
        raise InvalidInputError(f"symbol {symbol!r} is not ASCII: {fix}")
    if "/" in symbol or "\\" in symbol or ".." in symbol:
        raise InvalidInputError(f"symbol {symbol!r} contains a path separator or '..': {fix}")
    if "," in symbol:
        raise InvalidInputError(f"symbol {symbol!r} contains a comma: ingest one symbol at a time")
    return symbol


def normalize_dataset(raw: str) -> str:
    dataset = raw.strip().upper()
    if not DATASET_PATTERN.match(dataset):
        raise InvalidInputError(
            f"--dataset {raw!r} is not a Databento dataset code: use VENUE.FEED, e.g. XNAS.ITCH"
        )
    return dataset


def year_range(year: int) -> TimeRange:
    return TimeRange(date_ns(date(year, 1, 1)), date_ns(date(year + 1, 1, 1)))


def clamp_year(year: int, available: TimeRange, dataset: str, schema: str) -> TimeRange:
    """The calendar year cut to what the dataset has for this schema; refuse a year with none."""
    wanted = year_range(year)
    start = max(wanted.start_ns, available.start_ns)
    end = min(wanted.end_ns, available.end_ns)
    if start >= end:
        raise InvalidInputError(
            f"{dataset} has no {schema} data in {year}: available from "
            f"{available.start[:10]} to {available.end[:10]} (end exclusive); "
            "pick a year in that range"
        )
    return TimeRange(start, end)


def split_range(span: TimeRange, chunking: Unit) -> list[TimeRange]:
    """Cut a range at calendar boundaries (years, months, ISO weeks from Monday, days) in UTC."""
    chunks: list[TimeRange] = []
    start = span.start_ns
    while start < span.end_ns:
        end = min(next_boundary_ns(start, chunking), span.end_ns)
        chunks.append(TimeRange(start, end))
        start = end
    return chunks


def chunk_unit(chunking: Chunking, estimated_bytes: int) -> Unit:
    """The calendar unit of a group's requests: as asked, or by its estimated size for `auto`."""
    if chunking != "auto":
        return chunking
    pieces = estimated_bytes / AUTO_REQUEST_BYTES
    if pieces <= 1:
        return "year"
    if pieces <= 12:
        return "month"
    return "week" if pieces <= 52 else "day"


def split_listed(span: TimeRange, listed: list[TimeRange], chunking: Unit) -> list[TimeRange]:
    """Chunks of `span` inside the periods a symbol is listed: no request for a gap at all.

    Touching periods (an instrument id that changes) are one stretch, cut at calendar bounds.
    """
    stretches: list[TimeRange] = []
    for period in sorted(listed):
        if stretches and period.start_ns <= stretches[-1].end_ns:
            last = stretches.pop()
            period = TimeRange(last.start_ns, max(last.end_ns, period.end_ns))  # noqa: PLW2901
        stretches.append(period)
    chunks: list[TimeRange] = []
    for stretch in stretches:
        start, end = max(span.start_ns, stretch.start_ns), min(span.end_ns, stretch.end_ns)
        if start < end:
            chunks += split_range(TimeRange(start, end), chunking)
    return chunks


def next_boundary_ns(ns: int, chunking: Unit) -> int:
    day = ns_to_datetime(ns).date()
    if chunking == "year":
        following = date(day.year + 1, 1, 1)
    elif chunking == "month":
        following = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    elif chunking == "week":
        following = day + timedelta(days=7 - day.weekday())
    else:
        following = day + timedelta(days=1)
    return date_ns(following)


def symbology_end_date(span: TimeRange) -> date:
    """The last midnight at or before the end: symbology is asked up to there (exclusive)."""
    return ns_to_datetime(span.end_ns).date()


def has_weekday(span: TimeRange) -> bool:
    """Whether [start, end) touches a Monday to Friday (UTC dates)."""
    day = ns_to_datetime(span.start_ns).date()
    last = ns_to_datetime(span.end_ns - 1).date()
    while day <= last:
        if day.weekday() < 5:
            return True
        day += timedelta(days=1)
    return False


def date_ns(day: date) -> int:
    return calendar.timegm(day.timetuple()) * NS_PER_SECOND


def ns_to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // NS_PER_SECOND, tz=UTC)


def format_ns(ns: int) -> str:
    """ISO 8601 in UTC; nanoseconds shown only when there are any."""
    seconds, fraction = divmod(ns, NS_PER_SECOND)
    text = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{fraction:09d}Z" if fraction else f"{text}Z"


def now_iso() -> str:
    """This moment in UTC, to the second (`2026-12-02T16:01:00Z`): when a record was written."""
    return format_ns(time.time_ns() // NS_PER_SECOND * NS_PER_SECOND)


def parse_timestamp_ns(text: str) -> int:
    """Databento's ISO timestamps (`2018-05-01T00:00:00.000000000Z`, dates, offsets) -> ns."""
    value = text.strip()
    fraction_ns = 0
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)\.(\d{1,9})(.*)$", value)
    if match:
        value = match.group(1) + match.group(3)
        fraction_ns = int(match.group(2).ljust(9, "0"))
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return calendar.timegm(parsed.utctimetuple()) * NS_PER_SECOND + fraction_ns
