"""Universe runs: many symbols x years in one command, grouped requests, the same per-symbol files.

Real SDK against the sandbox gateway; nothing is mocked.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from tests.helpers import (
    add_tricky_symbols,
    completions,
    decompressed,
    leftovers,
    plain_get_range,
    year_folder,
)

GET_RANGE = "timeseries.get_range"
FULL_YEAR = ("AAPL", "MSFT", "SWAPA", "SWAPB")


def get_ranges(gateway) -> list[list[str]]:
    return [r.params["symbols"].split(",") for r in gateway.requests if r.endpoint == GET_RANGE]


def test_universe_files_equal_single_symbol_requests(gateway, cli, data_dir, tmp_path):
    """Grouped and split, each symbol's file is what one request for that symbol returns."""
    add_tricky_symbols(gateway)
    symbols = ",".join([*FULL_YEAR, "OLDCO", "REUSE"])
    result = cli("data", "--symbols", symbols, "--year", "2023", "--products", "trades")
    assert result.exit_code == 0, result.output
    assert len(completions(result.stdout)) == 6
    for symbol in FULL_YEAR:
        single = plain_get_range(gateway, [symbol], tmp_path / f"{symbol}.single")
        merged = year_folder(data_dir, symbol) / "TRADES.dbn.zst"
        assert decompressed(merged) == decompressed(single), symbol
    for symbol in ("OLDCO", "REUSE"):  # partial years: same file as a one-symbol run
        grouped = decompressed(year_folder(data_dir, symbol) / "TRADES.dbn.zst")
        alone = tmp_path / "alone"
        run = cli(
            *("data", "--symbol", symbol, "--year", "2023", "--products", "trades"),
            "--data-dir",
            str(alone),
        )
        assert run.exit_code == 0, run.output
        assert grouped == decompressed(year_folder(alone, symbol) / "TRADES.dbn.zst"), symbol


def test_universe_sends_one_request_per_group_chunk(gateway, cli, data_dir):
    """Four symbols x 12 months x 2 products: 24 requests, not 96."""
    add_tricky_symbols(gateway)
    result = cli("data", "--symbols", ",".join(FULL_YEAR), "--year", "2023", "--chunk", "month")
    assert result.exit_code == 0, result.output
    asked = get_ranges(gateway)
    assert len(asked) == 24
    assert all(sorted(symbols) == sorted(FULL_YEAR) for symbols in asked)
    assert gateway.count("symbology.resolve") == 1
    assert gateway.count("metadata.get_cost") == 2


def test_group_size_bounds_the_symbols_per_request(gateway, cli, data_dir):
    """--group-size 2 splits four symbols into two groups."""
    add_tricky_symbols(gateway)
    result = cli(
        *("data", "--symbols", ",".join(FULL_YEAR), "--year", "2023", "--products", "trades"),
        *("--group-size", "2", "--chunk", "month"),
    )
    assert result.exit_code == 0, result.output
    assert {len(symbols) for symbols in get_ranges(gateway)} == {2}
    assert len(get_ranges(gateway)) == 24


def test_cached_universe_rerun_sends_no_request_and_needs_no_key(
    gateway, cli, data_dir, monkeypatch
):
    """A finished universe is answered from local files alone."""
    args = ("data", "--symbols", "AAPL,MSFT", "--years", "2024-2025", "--products", "trades")
    assert cli(*args).exit_code == 0
    gateway.reset()
    monkeypatch.delenv("DATABENTO_API_KEY")
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert [line["status"] for line in completions(result.stdout)] == ["skipped"] * 4
    assert gateway.requests == []


def test_partly_cached_universe_fetches_only_what_is_missing(gateway, cli, data_dir):
    """Cached symbol-years are not requested again, not even inside a group."""
    assert cli("data", "--symbol", "AAPL", "--year", "2025", "--products", "trades").exit_code == 0
    gateway.reset()
    result = cli("data", "--symbols", "AAPL,MSFT,BRK.B", "--year", "2025", "--products", "trades")
    assert result.exit_code == 0, result.output
    assert {tuple(sorted(s)) for s in get_ranges(gateway)} == {("BRK.B", "MSFT")}


def test_unknown_symbol_is_reported_by_name_and_the_others_complete(gateway, cli, data_dir):
    """Exit 2 naming the unknown symbol; every known symbol is fetched."""
    result = cli("data", "--symbols", "AAPL,NOSUCH,MSFT", "--year", "2025", "--products", "trades")
    assert result.exit_code == 2
    assert "NOSUCH 2025" in result.stderr
    assert "not found" in result.stderr
    assert sorted(line["symbol"] for line in completions(result.stdout)) == ["AAPL", "MSFT"]
    assert not year_folder(data_dir, "NOSUCH", 2025).exists()


def test_year_without_data_is_reported_and_other_years_complete(gateway, cli, data_dir):
    """2017 is before the dataset: reported, 2018 still fetched."""
    result = cli("data", "--symbol", "AAPL", "--years", "2017-2018", "--products", "trades")
    assert result.exit_code == 2
    assert "AAPL 2017" in result.stderr
    assert [line["year"] for line in completions(result.stdout)] == ["2018"]


def test_symbols_file_and_years_make_the_cross_product(gateway, cli, data_dir, tmp_path):
    """Blank lines, comments and duplicates in the file are ignored; --symbol adds to it."""
    listing = tmp_path / "universe.txt"
    listing.write_text("# watch list\nAAPL\n\nmsft  # lower case is fine\nAAPL\n")
    result = cli(
        *("data", "--symbols-file", str(listing), "--symbol", "BRK.B"),
        *("--years", "2024,2025", "--products", "trades", "--dry-run"),
    )
    assert result.exit_code == 0, result.output
    assert "3 symbols x 2 years" in result.stdout
    assert "6 symbol-year-products" in result.stdout
    assert get_ranges(gateway) == []


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--symbols", "AAPL,../x"), "path separator"),
        (("--symbols-file", "/nonexistent/list.txt"), "does not exist"),
        (("--symbols", "AAPL", "--years", "2023-2021"), "earlier year"),
        (("--symbols", "AAPL", "--years", "2023,²"), "is not a number"),
        (("--years", "2023"), "no symbol given"),
        (("--symbols", "AAPL"), "no year given"),
    ],
)
def test_bad_universe_input_exits_2_with_one_line(gateway, cli, data_dir, flags, says):
    """Malformed lists are refused before anything is asked or written."""
    result = cli("data", *flags)
    assert result.exit_code == 2
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert gateway.requests == []


def test_jobs_bounds_concurrent_connections(gateway, cli, data_dir):
    """--jobs 2: never more than two get_range in flight, whatever the number of chunks."""
    gateway.latency_s = 0.2
    result = cli(
        *("data", "--symbols", "AAPL,MSFT", "--year", "2025", "--products", "trades,tbbo"),
        *("--jobs", "2"),
    )
    assert result.exit_code == 0, result.output
    assert gateway.max_in_flight() == 2


def test_universe_dry_run_lists_each_symbol_year_and_the_total(gateway, cli, data_dir):
    """A per-symbol-year table, collapsed beyond a screenful, then the requests and the cost."""
    for index in range(30):
        gateway.add_symbol(f"SYM{index:02d}", [(date(2000, 1, 1), date(2100, 1, 1), 5000 + index)])
    symbols = ",".join(f"SYM{index:02d}" for index in range(30))
    result = cli("data", "--symbols", symbols, "--year", "2025", "--dry-run", "--chunk", "month")
    assert result.exit_code == 0, result.output
    assert "more rows" in result.stdout
    assert "60 symbol-year-products in 2 groups, 10 requests" in result.stdout
    assert get_ranges(gateway) == []


@pytest.mark.slow
def test_kill_9_mid_universe_resumes_without_refetching_finished_chunks(slow_gateway, tmp_path):
    """Finished group chunks survive a SIGKILL as per-symbol parts; the rerun asks only the rest."""
    slow_gateway.sandbox.set_dataset_range("XNAS.ITCH", "2018-05-01", "2025-03-01")
    data_dir = tmp_path / "data"
    argv = [
        *(sys.executable, "-m", "backend.jobs.cli", "data", "--symbols", "AAPL,MSFT"),
        *("--year", "2025", "--products", "trades", "--chunk", "week"),
        *("--data-dir", str(data_dir)),
    ]
    run = subprocess.Popen([*argv, "--jobs", "2"], env=slow_gateway.env, stdout=subprocess.PIPE)

    def parts(symbol: str) -> list[Path]:
        folder = year_folder(data_dir, symbol, 2025) / ".parts" / "TRADES"
        return sorted(folder.glob("*.dbn.zst"))

    for _ in range(1200):
        if len(parts("MSFT")) >= 2:
            break
        subprocess.run(["sleep", "0.05"], check=True)
    run.send_signal(signal.SIGKILL)
    run.communicate()
    kept = len(parts("AAPL"))
    assert kept == len(parts("MSFT")) >= 2
    slow_gateway.reset()
    slow_gateway.sandbox.throttle_bytes_per_s = None  # the re-run need not be slow
    slow_gateway.sandbox.set_dataset_range("XNAS.ITCH", "2018-05-01", "2025-03-01")
    rerun = subprocess.run(
        [*argv, "--jobs", "8"], env=slow_gateway.env, capture_output=True, text=True, check=False
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    manifest = json.loads((year_folder(data_dir, "MSFT", 2025) / "manifest.json").read_text())
    chunks = len(manifest["products"]["TRADES"]["chunks"])
    assert slow_gateway.count(GET_RANGE) == chunks - kept
    assert f"reused_chunks={kept}" in rerun.stdout
    assert leftovers(data_dir) == []


def test_auto_chunking_fetches_a_small_year_in_one_request(gateway, cli, data_dir, tmp_path):
    """--chunk auto sizes requests by bytes: a small symbol-year is one request per group."""
    add_tricky_symbols(gateway)
    symbols = ",".join(FULL_YEAR)
    result = cli(
        "data", "--symbols", symbols, "--year", "2023", "--products", "trades", "--chunk", "auto"
    )
    assert result.exit_code == 0, result.output
    assert len(get_ranges(gateway)) == 1
    single = plain_get_range(gateway, ["MSFT"], tmp_path / "MSFT.single")
    assert decompressed(year_folder(data_dir, "MSFT") / "TRADES.dbn.zst") == decompressed(single)


def test_a_failed_run_outranks_unknown_symbols_in_the_exit_code(gateway, cli, data_dir):
    """1 (run again) when the rest failed, even if a symbol-year was unknown (which alone is 2)."""
    from backend.sandbox import Fault

    gateway.add_fault(Fault(endpoint=GET_RANGE, status=402, times=100))
    args = ("data", "--symbols", "AAPL,NOSUCH", "--year", "2025", "--products", "trades")
    result = cli(*args)
    assert result.exit_code == 1
    assert "NOSUCH 2025" in result.stderr
    assert "402" in result.stderr
    assert cli("data", "--symbol", "AAPL", "--year", "2025", "--products", "trades").exit_code == 1
