"""Splitting one multi-symbol stream into per-symbol parts, each equal to a single-symbol request.

Real SDK against the sandbox gateway: the group stream and the single-symbol streams are both
what the service serves; nothing is mocked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.jobs.core.dbn import scan
from backend.jobs.core.ranges import TimeRange, parse_timestamp_ns
from backend.jobs.core.request import RangeRequest
from backend.jobs.engines.split import split_by_symbol
from backend.jobs.errors import CorruptFileError
from tests.helpers import add_tricky_symbols, decompressed, plain_get_range

START, END = "2023-05-01T00:00:00Z", "2023-08-01T00:00:00Z"
SPAN = TimeRange(parse_timestamp_ns(START), parse_timestamp_ns(END))


def get_range(gateway, symbols: list[str], schema: str, path: Path) -> Path:
    return plain_get_range(gateway, symbols, path, schema=schema, start=START, end=END)


@pytest.fixture
def tricky(gateway):
    add_tricky_symbols(gateway)
    return gateway


GROUP = ("AAPL", "MSFT", "NEWCO", "SWAPA", "SWAPB", "OLDCO", "REUSE")


@pytest.mark.parametrize(("schema", "record_size"), [("trades", 48), ("tbbo", 80)])
def test_each_symbols_part_equals_a_single_symbol_request(tricky, tmp_path, schema, record_size):
    """Records by id *and* date, header with only the symbol's own mappings and status."""
    group = get_range(tricky, list(GROUP), schema, tmp_path / "group.dbn.zst")
    outputs = {symbol: tmp_path / f"{symbol}.part" for symbol in GROUP}
    request = RangeRequest("XNAS.ITCH", GROUP, schema, SPAN)
    summaries = split_by_symbol(group, request, record_size, outputs, tmp_path)
    for symbol in GROUP:
        single = get_range(tricky, [symbol], schema, tmp_path / f"{symbol}.single")
        assert decompressed(outputs[symbol]) == decompressed(single), symbol
        assert summaries[symbol].records == scan(single, record_size).records
    assert sum(summary.records for summary in summaries.values()) > 0
    assert summaries["NEWCO"].metadata.partial == ["NEWCO"]
    assert summaries["AAPL"].metadata.partial == []


def test_parts_spilled_past_the_memory_budget_are_the_bytes_of_parts_held_in_memory(
    gateway, tmp_path, monkeypatch
):
    """A split holds its records in memory up to a budget, then moves the largest symbols'
    to raw files: what it writes does not depend on where the records waited."""
    from backend.jobs.engines.split import Router

    symbols = ("AAPL", "MSFT")
    group = get_range(gateway, list(symbols), "trades", tmp_path / "group.dbn.zst")
    request = RangeRequest("XNAS.ITCH", symbols, "trades", SPAN)

    def split(name: str) -> dict[str, bytes]:
        folder = tmp_path / name
        folder.mkdir()
        outputs = {symbol: folder / f"{symbol}.part" for symbol in symbols}
        split_by_symbol(group, request, 48, outputs, folder)
        spilled = sorted(path.name for path in folder.glob("*.raw"))
        return {"raw files": ",".join(spilled).encode()} | {
            symbol: path.read_bytes() for symbol, path in outputs.items()
        }

    held = split("held")
    monkeypatch.setattr(Router, "BATCH_BYTES", 1 << 12)
    monkeypatch.setattr(Router, "HELD_BYTES", 1 << 14)
    spilled = split("spilled")
    assert held.pop("raw files") == b""
    assert spilled.pop("raw files") == b"0.raw,1.raw"
    assert spilled == held


def test_unknown_symbol_gets_an_empty_part_marked_not_found(gateway, tmp_path):
    """A symbol the service does not resolve keeps an empty part that says so."""
    symbols = ("AAPL", "ZZZZ")
    group = get_range(gateway, list(symbols), "trades", tmp_path / "group.dbn.zst")
    outputs = {symbol: tmp_path / f"{symbol}.part" for symbol in symbols}
    summaries = split_by_symbol(
        group, RangeRequest("XNAS.ITCH", symbols, "trades", SPAN), 48, outputs, tmp_path
    )
    assert summaries["ZZZZ"].records == 0
    assert summaries["ZZZZ"].metadata.not_found == ["ZZZZ"]
    assert summaries["ZZZZ"].metadata.mappings == {}
    assert summaries["AAPL"].records > 0


def test_stream_of_other_symbols_is_refused(gateway, tmp_path):
    """A stream whose header names other symbols is not split as if it were ours."""
    group = get_range(gateway, ["AAPL", "MSFT"], "trades", tmp_path / "group.dbn.zst")
    request = RangeRequest("XNAS.ITCH", ("AAPL", "BRK.B"), "trades", SPAN)
    outputs = {symbol: tmp_path / f"{symbol}.part" for symbol in request.symbols}
    with pytest.raises(CorruptFileError, match="does not match its request"):
        split_by_symbol(group, request, 48, outputs, tmp_path)
