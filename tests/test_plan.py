"""Pure planning rules: validation, clamping, chunking, symbol folders. No network."""

from __future__ import annotations

import itertools
from datetime import date

import pytest

from backend.jobs.cache.layout import folder_symbol, symbol_folder
from backend.jobs.core.ranges import (
    TimeRange,
    clamp_year,
    date_ns,
    format_ns,
    normalize_dataset,
    normalize_symbol,
    parse_products,
    parse_timestamp_ns,
    split_range,
    year_range,
)
from backend.jobs.errors import InvalidInputError


def test_parse_products_is_case_insensitive_and_deduplicated():
    """Users type TRADES, trades or 'tbbo, trades'; each product is fetched once."""
    assert [p.name for p in parse_products(" Trades,TBBO,trades ")] == ["TRADES", "TBBO"]


@pytest.mark.parametrize("text", ["quotes", "", ",", "trades,mbo"])
def test_parse_products_unknown_raises_invalid_input(text):
    """Only trades and tbbo exist; anything else is a usage error, not a silent no-op."""
    with pytest.raises(InvalidInputError, match="product"):
        parse_products(text)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("aapl", "AAPL"), (" BRK.B ", "BRK.B"), ("AAPL  250221C00250000", "AAPL  250221C00250000")],
)
def test_normalize_symbol_accepts_real_symbols(raw, expected):
    """Dots, dashes and inner spaces occur in real Databento symbols."""
    assert normalize_symbol(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "   ", "../x", "a/b", "a\\b", "..", "A\x00B", "A\nB", "A,B", "X" * 71, "ÄPFEL"]
)
def test_normalize_symbol_rejects_unsafe_symbols(raw):
    """Anything that could escape the cache folder or split into two symbols is refused."""
    with pytest.raises(InvalidInputError):
        normalize_symbol(raw)


@pytest.mark.parametrize(
    "symbol", ["AAPL", "BRK.B", "AAPL  250221C00250000", ".HIDDEN", "A%B", "ES-FUT"]
)
def test_symbol_folder_round_trips_and_is_one_safe_path_part(symbol):
    """The folder name is reversible and never hidden, nested or special."""
    folder = symbol_folder(symbol)
    assert folder_symbol(folder) == symbol
    assert "/" not in folder
    assert " " not in folder
    assert not folder.startswith(".")


def test_symbol_folder_keeps_common_tickers_readable():
    """BRK.B stays BRK.B on disk; only unusual bytes are percent-encoded."""
    assert symbol_folder("BRK.B") == "BRK.B"
    assert symbol_folder("AAPL  250221C00250000") == "AAPL%20%20250221C00250000"


@pytest.mark.parametrize("raw", ["nope", "XNAS", "XNAS.ITCH.X", "XN AS.ITCH", ""])
def test_normalize_dataset_rejects_malformed_codes(raw):
    """A dataset code is VENUE.FEED; a typo fails before any request."""
    with pytest.raises(InvalidInputError, match="dataset"):
        normalize_dataset(raw)


@pytest.mark.parametrize("year", ["1899", "1969", "10000"])
def test_parse_year_rejects_out_of_range(year):
    """Years outside four digits since the epoch cannot be a Databento year."""
    from backend.jobs.core.universe import parse_year

    with pytest.raises(InvalidInputError, match="out of range"):
        parse_year(year)


def test_clamp_year_cuts_to_the_available_range():
    """The current year ends where the data ends; the first year starts where it starts."""
    available = TimeRange(date_ns(date(2018, 5, 1)), date_ns(date(2025, 6, 1)))
    assert clamp_year(2018, available, "XNAS.ITCH", "trades").start == "2018-05-01T00:00:00Z"
    assert clamp_year(2025, available, "XNAS.ITCH", "trades").end == "2025-06-01T00:00:00Z"
    assert clamp_year(2023, available, "XNAS.ITCH", "trades") == year_range(2023)


@pytest.mark.parametrize("year", [2017, 2026])
def test_clamp_year_outside_range_names_the_available_range(year):
    """A year with no data exits 2 and tells the user which years exist."""
    available = TimeRange(date_ns(date(2018, 5, 1)), date_ns(date(2025, 6, 1)))
    with pytest.raises(InvalidInputError, match="2018-05-01 to 2025-06-01"):
        clamp_year(year, available, "XNAS.ITCH", "trades")


def test_split_range_by_month_gives_twelve_contiguous_chunks():
    """Chunks tile the range exactly: no gap, no overlap."""
    chunks = split_range(year_range(2023), "month")
    assert len(chunks) == 12
    assert chunks[0].start_ns == year_range(2023).start_ns
    assert chunks[-1].end_ns == year_range(2023).end_ns
    assert all(a.end_ns == b.start_ns for a, b in itertools.pairwise(chunks))
    assert chunks[1].start == "2023-02-01T00:00:00Z"


def test_split_range_by_week_starts_on_mondays():
    """Weeks are ISO weeks; the first and last are partial."""
    chunks = split_range(year_range(2023), "week")
    assert chunks[0].end == "2023-01-02T00:00:00Z"  # 2023-01-02 is a Monday
    assert len(chunks) == 53


def test_split_range_by_day_respects_a_mid_day_end():
    """A clamped end inside a day ends the last chunk there."""
    span = TimeRange(date_ns(date(2024, 2, 28)), date_ns(date(2024, 3, 1)) + 3_600 * 10**9)
    chunks = split_range(span, "day")
    assert [c.start[:10] for c in chunks] == ["2024-02-28", "2024-02-29", "2024-03-01"]
    assert chunks[-1].end == "2024-03-01T01:00:00Z"


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2018-05-01T00:00:00.000000000Z", 1525132800 * 10**9),
        ("2018-05-01", 1525132800 * 10**9),
        ("2018-05-01T00:00:00.000000001+00:00", 1525132800 * 10**9 + 1),
    ],
)
def test_parse_timestamp_ns_reads_databento_formats(text, ns):
    """The server answers with nanosecond ISO strings; dates alone mean midnight UTC."""
    assert parse_timestamp_ns(text) == ns
    assert parse_timestamp_ns(format_ns(ns)) == ns


def test_split_listed_skips_gaps_and_keeps_calendar_bounds_across_id_changes():
    """A delisted stretch is never requested; an instrument id change is no chunk boundary."""
    from backend.jobs.core.ranges import TimeRange, date_ns, split_listed, year_range

    def days(first: date, last: date) -> TimeRange:
        return TimeRange(date_ns(first), date_ns(last))

    listed = [
        days(date(2023, 1, 1), date(2023, 3, 15)),
        days(date(2023, 3, 15), date(2023, 4, 10)),  # same listing, new instrument id
        days(date(2023, 9, 1), date(2024, 1, 1)),  # relisted after a gap
    ]
    chunks = split_listed(year_range(2023), listed, "month")
    assert [(c.start[:10], c.end[:10]) for c in chunks] == [
        ("2023-01-01", "2023-02-01"),
        ("2023-02-01", "2023-03-01"),
        ("2023-03-01", "2023-04-01"),
        ("2023-04-01", "2023-04-10"),
        ("2023-09-01", "2023-10-01"),
        ("2023-10-01", "2023-11-01"),
        ("2023-11-01", "2023-12-01"),
        ("2023-12-01", "2024-01-01"),
    ]


@pytest.mark.parametrize(
    ("text", "years"),
    [
        ("2023", [2023]),
        ("2021-2023", [2021, 2022, 2023]),
        ("2021,2023", [2021, 2023]),
        ("2019, 2021-2022,2019", [2019, 2021, 2022]),
    ],
)
def test_parse_years_reads_ranges_and_lists(text, years):
    """--years takes ranges and lists, keeps the order given and drops repeats."""
    from backend.jobs.core.universe import parse_years

    assert parse_years(text) == years


@pytest.mark.parametrize("text", ["", "2023-2021", "20x3", "2023-", "1900-2023", "\u00b2"])
def test_parse_years_refuses_what_is_not_years(text):
    """Bad ranges, non-ASCII digits and out-of-range years are input errors."""
    from backend.jobs.core.universe import parse_years

    with pytest.raises(InvalidInputError):
        parse_years(text)


def test_universe_is_the_cross_product_without_repeats(tmp_path):
    """--symbol, --symbols and --symbols-file add up; duplicates and comments are dropped."""
    from backend.jobs.core.universe import universe

    listing = tmp_path / "list.txt"
    listing.write_text("# header\nmsft\n\nAAPL # again\nnvda\n")
    symbols, years = universe(
        symbol="AAPL",
        symbols="BRK.B,aapl",
        symbols_file=str(listing),
        year="2024",
        years="2023-2024",
    )
    assert symbols == ("AAPL", "BRK.B", "MSFT", "NVDA")
    assert years == (2024, 2023)


@pytest.mark.parametrize(
    ("requests", "unit"),
    [(0, "year"), (1, "year"), (1.01, "month"), (12, "month"), (13, "week"), (53, "day")],
)
def test_auto_chunking_picks_the_unit_by_estimated_bytes(requests, unit):
    """About AUTO_REQUEST_BYTES (128 MiB) per request: a small year is one request, a huge one
    is cut in days."""
    from backend.jobs.core.ranges import AUTO_REQUEST_BYTES, chunk_unit

    assert AUTO_REQUEST_BYTES == 128 * 2**20
    size = int(requests * AUTO_REQUEST_BYTES)
    assert chunk_unit("auto", size) == unit
    assert chunk_unit("week", size) == "week"
