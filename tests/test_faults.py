"""Faults, signals and deadlines: every way a run ends is bounded, clean and explained.

Real SDK against the sandbox gateway and its injected faults; nothing is mocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import date

import pytest
from filelock import FileLock

from backend.sandbox import Fault
from tests.helpers import completions, decompressed, leftovers, plain_get_range, year_folder

GET_RANGE = "timeseries.get_range"
MARCH = "2023-03-01"
# month chunks: the faults below hit one of a year's 12 requests
TRADES_2023 = (
    "data",
    "--symbol",
    "AAPL",
    "--year",
    "2023",
    "--products",
    "trades",
    "--chunk",
    "month",
)
METADATA_ENDPOINTS = (
    "metadata.get_dataset_range",
    "symbology.resolve",
    "metadata.get_billable_size",
    "metadata.get_cost",
)


def march(**fault: object) -> Fault:
    return Fault(endpoint=GET_RANGE, match=lambda p: p["start"].startswith(MARCH), **fault)


def march_requests(gateway) -> int:
    return sum(
        1 for r in gateway.requests if r.endpoint == GET_RANGE and r.params["start"][:10] == MARCH
    )


# deadlines


def test_retry_after_above_the_cap_fails_at_once_saying_when(gateway, cli, data_dir):
    """A 429 asking for a day is not slept through: exit 1 at once, finished chunks kept."""
    december = Fault(
        endpoint=GET_RANGE,
        match=lambda p: p["start"].startswith("2023-12"),
        status=429,
        retry_after=86400,
        times=5,
    )
    gateway.add_fault(december)
    began = time.monotonic()
    result = cli(*TRADES_2023, "--jobs", "1")
    assert result.exit_code == 1
    assert time.monotonic() - began < 30
    assert "retry in 86400s" in result.stderr
    assert "UTC" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert gateway.count(GET_RANGE) == 12  # December asked once, never retried
    assert len(list((year_folder(data_dir) / ".parts" / "TRADES").glob("*.dbn.zst"))) == 11
    assert leftovers(data_dir) == []


def test_retry_after_within_the_cap_is_honoured(gateway, cli, data_dir):
    """Up to the cap, the server's Retry-After is obeyed and the chunk retried."""
    gateway.add_fault(march(status=503, retry_after=1, times=1))
    result = cli(*TRADES_2023)
    assert result.exit_code == 0, result.output
    assert "retry 1/5 in 1.0s" in result.stdout
    assert march_requests(gateway) == 2


def test_stalled_first_byte_is_given_up_after_timeout_and_retried(gateway, cli, data_dir):
    """A server that never answers costs one --timeout, then the chunk is asked again."""
    gateway.add_fault(march(delay_s=30, times=1))
    result = cli(*TRADES_2023, "--timeout", "1")
    assert result.exit_code == 0, result.output
    assert "no answer for 1s" in result.stdout
    assert march_requests(gateway) == 2


def test_stall_in_the_middle_of_a_stream_is_given_up_and_retried(gateway, cli, data_dir):
    """A stream that stops sending (connection left open) is cut after --timeout."""
    gateway.add_fault(march(stall_after_bytes=2000, stall_s=30, times=1))
    result = cli(*TRADES_2023, "--timeout", "1")
    assert result.exit_code == 0, result.output
    assert march_requests(gateway) == 2
    assert leftovers(data_dir) == []


def test_failed_run_starts_no_new_chunk_and_ends_within_about_one_timeout(gateway, cli, data_dir):
    """All requests stalled, no retries: the run ends after ~one timeout, not one per chunk."""
    gateway.add_fault(Fault(endpoint=GET_RANGE, delay_s=60, times=100))
    began = time.monotonic()
    result = cli(*TRADES_2023, "--timeout", "2", "--retries", "0", "--jobs", "2")
    elapsed = time.monotonic() - began
    assert result.exit_code == 1
    assert elapsed < 15, elapsed
    assert gateway.count(GET_RANGE) <= 2  # the two in flight; none started after the failure
    assert leftovers(data_dir) == []


@pytest.mark.parametrize("endpoint", METADATA_ENDPOINTS)
def test_preflight_calls_are_retried_like_chunks(gateway, cli, data_dir, endpoint):
    """One 503 on a metadata or symbology call is retried, not the end of the run."""
    gateway.add_fault(Fault(endpoint=endpoint, status=503, times=1))
    result = cli(*TRADES_2023)
    assert result.exit_code == 0, result.output
    assert "retry 1/5" in result.stdout
    assert gateway.count(endpoint) == 2


def test_stalled_preflight_call_is_given_up_after_timeout(gateway, cli, data_dir):
    """The --timeout bounds metadata calls too."""
    gateway.add_fault(Fault(endpoint="symbology.resolve", delay_s=30, times=1))
    result = cli(*TRADES_2023, "--timeout", "1", "--dry-run")
    assert result.exit_code == 0, result.output
    assert gateway.count("symbology.resolve") == 2


# chunks with no data


@pytest.mark.parametrize("answer", ["empty", "422"])
def test_day_chunks_of_weekends_are_empty_parts_not_errors(
    gateway, cli, data_dir, tmp_path, answer
):
    """Weekend chunks (an empty stream or a 422) are empty parts; the file == one request."""
    gateway.no_session_answer = answer
    gateway.set_dataset_range("XNAS.ITCH", "2018-05-01", "2023-01-17")
    result = cli(*TRADES_2023, "--chunk", "day")
    assert result.exit_code == 0, result.output
    assert completions(result.stdout)[0]["status"] == "downloaded"
    single = plain_get_range(
        gateway, ["AAPL"], tmp_path / "single.dbn.zst", start="2023-01-01", end="2023-01-17"
    )
    assert decompressed(year_folder(data_dir) / "TRADES.dbn.zst") == decompressed(single)


def test_week_chunk_of_a_lone_sunday_is_an_empty_part(gateway, cli, data_dir):
    """--chunk week starts 2023 with a Sunday-only chunk: refused with 422, still exit 0."""
    gateway.no_session_answer = "422"
    gateway.set_dataset_range("XNAS.ITCH", "2018-05-01", "2023-01-20")
    result = cli(*TRADES_2023, "--chunk", "week")
    assert result.exit_code == 0, result.output
    manifest = json.loads((year_folder(data_dir) / "manifest.json").read_text())
    first = manifest["products"]["TRADES"]["chunks"][0]
    assert (first["start"], first["end"], first["records"]) == (
        "2023-01-01T00:00:00Z",
        "2023-01-02T00:00:00Z",
        0,
    )


def test_gap_in_the_listing_is_never_requested(gateway, cli, data_dir, tmp_path):
    """A symbol delisted for months is fetched only where it is listed; file == one request."""
    gateway.add_symbol(
        "GAPCO",
        [(date(2000, 1, 1), date(2023, 3, 1), 501), (date(2023, 9, 1), date(2100, 1, 1), 502)],
    )
    result = cli(
        "data", "--symbol", "GAPCO", "--year", "2023", "--products", "trades", "--chunk", "month"
    )
    assert result.exit_code == 0, result.output
    asked = sorted(r.params["start"][:7] for r in gateway.requests if r.endpoint == GET_RANGE)
    assert asked == ["2023-01", "2023-02", "2023-09", "2023-10", "2023-11", "2023-12"]
    single = plain_get_range(gateway, ["GAPCO"], tmp_path / "single.dbn.zst")
    merged = year_folder(data_dir, "GAPCO") / "TRADES.dbn.zst"
    assert decompressed(merged) == decompressed(single)


# budget and input


@pytest.mark.parametrize("budget", ["nan", "inf"])
def test_non_finite_budget_flag_is_refused(gateway, cli, data_dir, budget):
    """--max-cost nan must not switch the budget off."""
    result = cli(*TRADES_2023, "--max-cost", budget)
    assert result.exit_code == 2
    assert "--max-cost" in result.stderr
    assert gateway.count(GET_RANGE) == 0


@pytest.mark.parametrize("year", ["²", "①", "2023²", "\uff12\uff10\uff12\uff13"])
@pytest.mark.parametrize("command", ["data", "status", "verify"])
def test_year_must_be_ascii_digits_in_every_command(cli, data_dir, command, year):
    """Unicode digits are not years: exit 2 and one line, never a traceback."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = ["--symbol", "AAPL"] if command == "data" else []
    result = cli(command, *args, "--year", year)
    assert result.exit_code == 2
    assert "is not a number" in result.stderr


def test_usage_errors_under_log_json_are_one_json_line(data_dir):
    """Typer's own usage errors follow --log-json like every other error."""
    done = subprocess.run(
        [sys.executable, "-m", "backend.jobs.cli", "data", "--log-json", "--symbol", "AAPL"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    error = json.loads(lines[0])
    assert error["level"] == "ERROR"
    assert "--year" in error["message"]


# locks


def test_locks_are_taken_in_one_order_whatever_the_products_order(data_dir):
    """Waiting for TBBO, a run asked for trades,tbbo holds nothing: no lock-order deadlock."""
    from backend.jobs.cache.layout import SymbolYear
    from backend.jobs.cache.locks import locked
    from backend.jobs.core.ranges import PRODUCTS
    from backend.jobs.store.local import LocalStore

    store, folder = LocalStore(data_dir), SymbolYear("AAPL", 2023)
    (data_dir / folder.lock_key("TBBO")).parent.mkdir(parents=True)
    tbbo = FileLock(data_dir / folder.lock_key("TBBO"))
    tbbo.acquire()
    done = threading.Event()

    def run() -> None:
        with locked(store, [(folder, PRODUCTS["TRADES"]), (folder, PRODUCTS["TBBO"])], 10):
            done.set()

    waiter = threading.Thread(target=run)
    waiter.start()
    try:
        time.sleep(0.3)
        trades = FileLock(data_dir / folder.lock_key("TRADES"))
        trades.acquire(timeout=0)  # free: the waiter did not take TRADES before TBBO
        trades.release()
    finally:
        tbbo.release()
        waiter.join(timeout=10)
    assert done.is_set()
