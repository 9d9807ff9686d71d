"""The outcome of a universe run that did not fetch everything (issue 15).

Every symbol-year(-product) not fetched is named with its reason, the summary is printed on
failure too, and the exit code tells automation what to do first: 3 (credentials) > 1 (run it
again) > 2 (input to fix) > 0. Real SDK against the sandbox gateway; nothing is mocked.
"""

from __future__ import annotations

import pytest

from backend.jobs.cli.report import not_fetched_lines
from backend.jobs.errors import combined_exit_code
from backend.jobs.ingest import IngestReport, left_by
from backend.jobs.plan.preflight import FAILED, NO_DATA, UNKNOWN_SYMBOL, Failure, UniversePlan
from backend.sandbox import Fault
from tests.helpers import completions, year_folder

GET_RANGE = "timeseries.get_range"
TRADES = ("--products", "trades")
FAST_RETRIES = ("--retries", "1")  # one retry, after ~0.5 s: "failed after 2 attempts"


def failing(symbol: str, status: int) -> Fault:
    """Every get_range naming `symbol` is answered `status`, however often it is retried."""
    return Fault(
        endpoint=GET_RANGE, status=status, times=1000, match=lambda p: symbol in p["symbols"]
    )


# pure: the exit code of a run that ended several ways


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([], 0),
        ([0, 0], 0),
        ([2], 2),
        ([2, 1], 1),
        ([1, 2, 2], 1),
        ([2, 3], 3),
        ([1, 3, 2], 3),
    ],
)
def test_combined_exit_code_puts_credentials_then_failures_then_input(codes, expected):
    """A retry loop must keep going when a failure (1) came with an unknown symbol (2)."""
    assert combined_exit_code(codes) == expected


def test_report_names_each_unfetched_product_with_the_error_and_its_exit_code():
    """What a failed run left is every planned product it did not finish, with the error."""
    from backend.jobs.errors import TransientError

    error = TransientError("MSFT 2025 TRADES chunk 1/5 failed after 2 attempts: 503\nmore")
    report = IngestReport([], UniversePlan([], [Failure("NOSUCH", 2025, "not found")]), error, [])
    assert left_by(error, report.plan, set()) == []  # nothing was planned
    report.unfetched = [Failure("MSFT", 2025, "x", reason=FAILED, product="TRADES", exit_code=1)]
    assert report.exit_code == 1
    assert [f.name for f in report.failures] == ["NOSUCH 2025", "MSFT 2025 TRADES"]


def test_not_fetched_lines_group_names_under_their_reason():
    """One line per reason (and per error), so a thousand unknown symbols are one line."""
    failures = [
        Failure("NOSUCH", 2025, "symbol NOSUCH is not found", reason=UNKNOWN_SYMBOL),
        Failure("NOPE", 2025, "symbol NOPE is not found", reason=UNKNOWN_SYMBOL),
        Failure("AAPL", 2017, "no trades data in 2017", reason=NO_DATA),
        Failure("MSFT", 2025, "boom; run again", reason=FAILED, product="TRADES", exit_code=1),
        Failure("MSFT", 2025, "boom; run again", reason=FAILED, product="TBBO", exit_code=1),
    ]
    report = IngestReport([], UniversePlan([], failures[:3]), None, failures[3:])
    assert not_fetched_lines(report) == [
        "Not fetched (unknown to the dataset): NOSUCH 2025, NOPE 2025",
        "Not fetched (no data in that year): AAPL 2017",
        "Not fetched (failed): MSFT 2025 TRADES, MSFT 2025 TBBO: boom; run again",
    ]


# through the CLI


def test_universe_with_an_unknown_symbol_exits_2_naming_it_in_the_summary(gateway, cli, data_dir):
    """The good symbol is fetched; the unknown one is named with its reason, on both streams."""
    result = cli("data", "--symbols", "AAPL,NOSUCH", "--year", "2025", *TRADES)
    assert result.exit_code == 2, result.output
    assert [(line["symbol"], line["status"]) for line in completions(result.stdout)] == [
        ("AAPL", "downloaded")
    ]
    assert "Summary: 1 symbol-year-product downloaded" in result.stdout
    assert "0 failed; 1 symbol-year unknown or without data" in result.stdout
    assert "Not fetched (unknown to the dataset): NOSUCH 2025" in result.stdout
    assert "NOSUCH 2025: symbol NOSUCH is not found in XNAS.ITCH for 2025" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_universe_with_unknown_symbols_and_a_failing_chunk_exits_1_naming_every_reason(
    gateway, cli, data_dir
):
    """A 5xx after its retries outranks unknown input: exit 1, so a retry loop runs it again."""
    gateway.add_fault(failing("MSFT", 503))
    result = cli(
        *("data", "--symbols", "NOSUCH,MSFT", "--years", "2017,2025", *TRADES, *FAST_RETRIES)
    )
    assert result.exit_code == 1, result.output
    out, err = result.stdout, result.stderr
    assert "Summary: 0 symbol-year-products downloaded" in out
    assert "1 failed; 3 symbol-years unknown or without data" in out
    assert "Not fetched (no data in that year): NOSUCH 2017, MSFT 2017" in out
    assert "Not fetched (unknown to the dataset): NOSUCH 2025" in out
    assert "Not fetched (failed): MSFT 2025 TRADES: MSFT 2025 TRADES chunk" in out
    assert "failed after 2 attempts" in out
    assert "NOSUCH 2025: symbol NOSUCH is not found" in err
    assert "MSFT 2017: XNAS.ITCH has no trades data in 2017" in err
    failed = [line for line in err.splitlines() if "MSFT 2025 TRADES: " in line]
    assert len(failed) == 1
    assert "503" in failed[0]
    assert "run the same command again" in failed[0]
    assert not year_folder(data_dir, "MSFT", 2025).joinpath("TRADES.dbn.zst").exists()


def test_universe_failure_keeps_what_finished_and_names_only_what_it_left(gateway, cli, data_dir):
    """A product that finished before the failure is recorded; the failed one alone is named."""
    gateway.add_fault(failing("MSFT", 503))
    args = ("data", "--symbols", "AAPL,MSFT", "--year", "2025", "--group-size", "1", *TRADES)
    result = cli(*args, *FAST_RETRIES, "--jobs", "1")
    assert result.exit_code == 1, result.output
    done = {line["symbol"] for line in completions(result.stdout)}
    assert done == {"AAPL"}
    assert (year_folder(data_dir, "AAPL", 2025) / "TRADES.dbn.zst").exists()
    assert "Summary: 1 symbol-year-product downloaded" in result.stdout
    assert "Not fetched (failed): MSFT 2025 TRADES: " in result.stdout
    assert "AAPL 2025 TRADES" not in result.stdout.split("Summary:")[-1]


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, 3), (403, 3), (503, 1), (402, 1)],
    ids=["401", "403", "503", "402"],
)
def test_universe_exit_code_of_a_chunk_failure_with_an_unknown_symbol(
    gateway, cli, data_dir, status, code
):
    """Credentials outrank everything; any other failure outranks the unknown symbol (2)."""
    gateway.add_fault(failing("MSFT", status))
    args = ("data", "--symbols", "NOSUCH,MSFT", "--year", "2025", *TRADES, *FAST_RETRIES)
    result = cli(*args, "--jobs", "1")  # no request left in flight when the run stops
    assert result.exit_code == code, result.output
    assert "Not fetched (unknown to the dataset): NOSUCH 2025" in result.stdout
    assert "Not fetched (failed): MSFT 2025 TRADES" in result.stdout
    assert str(status) in result.stderr


def test_universe_with_a_rejected_key_exits_3_before_fetching(gateway, cli, data_dir):
    """A key refused by the preflight stops the run at once: one line, exit 3."""
    gateway.add_fault(Fault(endpoint="metadata.get_dataset_range", status=401, times=10))
    result = cli("data", "--symbols", "AAPL,NOSUCH", "--year", "2025", *TRADES)
    assert result.exit_code == 3, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    asked = [r for r in gateway.requests if r.endpoint == GET_RANGE]
    assert [r for r in asked if "AAPL" in r.params["symbols"]] == []


def test_single_symbol_failure_stays_one_stderr_line_with_exit_1(gateway, cli, data_dir):
    """One symbol-year: the error alone, as before (no list of what it left)."""
    gateway.add_fault(failing("AAPL", 503))
    result = cli("data", "--symbol", "AAPL", "--year", "2025", *TRADES, *FAST_RETRIES)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "AAPL 2025 TRADES chunk" in lines[0]
    assert "failed after 2 attempts" in lines[0]
