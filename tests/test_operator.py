"""What an operator sees: dry runs, budgets, symbol and year limits, logs, progress, status, verify.

Everything runs through the real SDK against the sandbox gateway; nothing is mocked.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import subprocess
import sys
from datetime import UTC, date, datetime
from importlib.metadata import version
from pathlib import Path

import databento
import pexpect
import pytest

from backend.sandbox import expected_records
from tests.helpers import completions, written_files, year_folder

REPO = Path(__file__).resolve().parents[1]
GET_RANGE = "timeseries.get_range"
METADATA_ENDPOINTS = {
    "metadata.get_dataset_range",
    "metadata.get_billable_size",
    "metadata.get_cost",
    "symbology.resolve",
}
# Sandbox price that turns a year of 20 records/day into dollars (TRADES ~$2.50, TBBO ~$4.16).
PRICE_PER_GB = 10_000.0
YEAR_2023 = ("2023-01-01T00:00:00Z", "2024-01-01T00:00:00Z")


# helpers


def ingest(cli, symbol: str = "AAPL", year: str = "2025", products: str = "trades,tbbo", *extra):
    """Run `data` in month chunks and insist it succeeded (2025 is the short year: 5 chunks)."""
    args = ("data", "--symbol", symbol, "--year", year, "--products", products, "--chunk", "month")
    result = cli(*args, *extra)
    assert result.exit_code == 0, result.output
    return result


def key_values(text: str) -> dict[str, str]:
    return dict(token.split("=", 1) for token in text.split() if "=" in token)


def preflights(output: str) -> dict[str, dict[str, str]]:
    """The `preflight key=value ...` log line of each product, by product name."""
    found = {}
    for line in output.splitlines():
        match = re.search(r"\bpreflight (symbol=.*)$", line)
        if match:
            values = key_values(match.group(1))
            found[values["product"]] = values
    return found


def manifest_entry(folder: Path, product: str) -> dict:
    return json.loads((folder / "manifest.json").read_text())["products"][product]


def table_rows(output: str) -> list[list[str]]:
    """Cells of the body rows of the rich tables in `output`."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


def sdk_estimate(gateway, api_key: str, symbol: str, schema: str, start: str, end: str):
    """What the server itself says the range costs, asked directly through the SDK."""
    client = databento.Historical(key=api_key, gateway=gateway.gateway)
    params = {
        "dataset": "XNAS.ITCH",
        "symbols": [symbol],
        "schema": schema,
        "stype_in": "raw_symbol",
        "start": start,
        "end": end,
    }
    return client.metadata.get_billable_size(**params), client.metadata.get_cost(**params)


def ns(moment: datetime) -> int:
    return calendar.timegm(moment.utctimetuple()) * 10**9


def data_files(data_dir: Path) -> list[Path]:
    return written_files(data_dir)


# dry run


def test_dry_run_sends_only_metadata_requests_and_writes_nothing(gateway, cli, data_dir):
    """A dry run must never download (or bill) data, nor leave files behind."""
    result = cli("data", "--symbol", "AAPL", "--year", "2023", "--dry-run")
    assert result.exit_code == 0, result.output
    endpoints = {request.endpoint for request in gateway.requests}
    assert endpoints <= METADATA_ENDPOINTS
    assert "symbology.resolve" in endpoints
    assert gateway.count(GET_RANGE) == 0
    assert data_files(data_dir) == []


def test_dry_run_estimate_matches_what_the_server_prices(gateway, cli, data_dir, api_key):
    """The printed bytes and USD are the server's own numbers for the clamped range."""
    gateway.price_per_gb = PRICE_PER_GB
    result = cli("data", "--symbol", "AAPL", "--year", "2023", "--dry-run", "--chunk", "month")
    assert result.exit_code == 0, result.output
    lines = preflights(result.stdout)
    rows = {row[0]: row for row in table_rows(result.stdout)}
    total_bytes = total_usd = 0.0
    for product, schema in (("TRADES", "trades"), ("TBBO", "tbbo")):
        size, cost = sdk_estimate(gateway, api_key, "AAPL", schema, *YEAR_2023)
        total_bytes, total_usd = total_bytes + size, total_usd + cost
        line = lines[product]
        assert (line["start"], line["end"]) == YEAR_2023
        assert int(line["est_bytes"]) == size > 0
        assert float(line["est_usd"]) == pytest.approx(cost, abs=1e-6)
        assert rows[product][1:] == [
            "to download",
            "stream",
            "2023-01-01 .. 2024-01-01 (excl.)",
            "12",
            f"{size / 1e6:,.1f} MB",
            f"${cost:.2f}",
        ]
    assert rows["total"][-2:] == [f"{total_bytes / 1e6:,.1f} MB", f"${total_usd:.2f}"]


def test_dry_run_fully_cached_year_sends_no_request(gateway, cli, data_dir):
    """Planning what is already cached costs nothing, not even a metadata call."""
    ingest(cli)
    gateway.reset()
    result = cli("data", "--symbol", "AAPL", "--year", "2025", "--dry-run")
    assert result.exit_code == 0, result.output
    assert gateway.requests == []
    assert {row[0]: row[1] for row in table_rows(result.stdout)}["TRADES"] == "cached"


def test_dry_run_partly_cached_year_plans_only_the_missing_product(gateway, cli, data_dir):
    """Only the product that is not cached is resolved and priced."""
    ingest(cli, products="trades")
    gateway.reset()
    result = cli("data", "--symbol", "AAPL", "--year", "2025", "--dry-run")
    assert result.exit_code == 0, result.output
    priced = {r.params["schema"] for r in gateway.requests if r.endpoint == "metadata.get_cost"}
    assert priced == {"tbbo"}
    assert gateway.count(GET_RANGE) == 0
    statuses = {row[0]: row[1] for row in table_rows(result.stdout)}
    assert (statuses["TRADES"], statuses["TBBO"]) == ("cached", "to download")


# budget


def test_max_cost_below_estimate_exits_2_naming_the_estimate(gateway, cli, data_dir):
    """A budget is checked before any billable request, and the refusal says by how much."""
    gateway.price_per_gb = PRICE_PER_GB
    result = cli("data", "--symbol", "AAPL", "--year", "2023", "--max-cost", "5")
    assert result.exit_code == 2, result.output
    total = sum(float(line["est_usd"]) for line in preflights(result.stdout).values())
    assert f"${total:.2f}" in result.stderr
    assert "$5.00" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert gateway.count(GET_RANGE) == 0
    assert data_files(data_dir) == []


def test_max_cost_above_estimate_downloads(gateway, cli, data_dir):
    """A budget above the estimate does not get in the way."""
    gateway.price_per_gb = PRICE_PER_GB
    result = cli(
        "data", "--symbol", "AAPL", "--year", "2023", "--max-cost", "10", "--chunk", "month"
    )
    assert result.exit_code == 0, result.output
    assert gateway.count(GET_RANGE) == 24
    assert sorted(p.name for p in year_folder(data_dir).glob("*.dbn.zst")) == [
        "TBBO.dbn.zst",
        "TRADES.dbn.zst",
    ]


def test_max_cost_counts_only_what_is_not_cached(gateway, cli, data_dir):
    """The budget covers what this run would buy, not the products already on disk."""
    gateway.price_per_gb = PRICE_PER_GB
    ingest(cli, year="2023", products="trades")
    result = cli("data", "--symbol", "AAPL", "--year", "2023", "--max-cost", "5")
    assert result.exit_code == 0, result.output
    assert [(line["product"], line["status"]) for line in completions(result.stdout)] == [
        ("TRADES", "skipped"),
        ("TBBO", "downloaded"),
    ]


def test_max_cost_env_below_estimate_exits_2(gateway, cli, data_dir, monkeypatch):
    """DATABENTO_MAX_COST refuses like the flag does, before any get_range."""
    gateway.price_per_gb = PRICE_PER_GB
    monkeypatch.setenv("DATABENTO_MAX_COST", "5")
    result = cli("data", "--symbol", "AAPL", "--year", "2023")
    assert result.exit_code == 2, result.output
    assert "$6.66" in result.stderr
    assert gateway.count(GET_RANGE) == 0


def test_max_cost_env_above_estimate_downloads(gateway, cli, data_dir, monkeypatch):
    """A generous DATABENTO_MAX_COST lets the run through."""
    gateway.price_per_gb = PRICE_PER_GB
    monkeypatch.setenv("DATABENTO_MAX_COST", "10")
    result = cli("data", "--symbol", "AAPL", "--year", "2023")
    assert result.exit_code == 0, result.output
    assert len(list(year_folder(data_dir).glob("*.dbn.zst"))) == 2


def test_max_cost_flag_wins_over_env(gateway, cli, data_dir, monkeypatch):
    """The flag overrides a stricter environment budget."""
    gateway.price_per_gb = PRICE_PER_GB
    monkeypatch.setenv("DATABENTO_MAX_COST", "1")
    result = cli("data", "--symbol", "AAPL", "--year", "2023", "--max-cost", "10")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("raw", ["abc", "-1", "nan", "5 USD"])
def test_max_cost_env_malformed_exits_2_with_one_line(gateway, cli, data_dir, monkeypatch, raw):
    """A typo in DATABENTO_MAX_COST must not silently disable the budget."""
    monkeypatch.setenv("DATABENTO_MAX_COST", raw)
    result = cli("data", "--symbol", "AAPL", "--year", "2023")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "DATABENTO_MAX_COST" in result.stderr
    assert gateway.requests == []


def test_max_cost_zero_refusal_shows_an_estimate_above_the_budget(gateway, cli, data_dir):
    """--max-cost 0 ('nothing billable') must show a refused estimate larger than the budget."""
    result = cli("data", "--symbol", "AAPL", "--year", "2023", "--max-cost", "0")
    assert result.exit_code == 2, result.output
    match = re.search(
        r"estimated cost \$([\d.]+) .*exceeds the budget of \$([\d.]+)", result.stderr
    )
    assert match, result.stderr
    assert float(match.group(1)) > float(match.group(2))


# symbols


def test_data_unknown_symbol_exits_2_before_any_download(gateway, cli, data_dir):
    """A typo in the ticker is caught by symbology, naming the dataset and year."""
    result = cli("data", "--symbol", "NOSUCH", "--year", "2023")
    assert result.exit_code == 2, result.output
    assert "NOSUCH" in result.stderr
    assert "XNAS.ITCH" in result.stderr
    assert "2023" in result.stderr
    assert gateway.count(GET_RANGE) == 0
    assert data_files(data_dir) == []


def test_data_partially_listed_symbol_warns_and_fetches_from_listing(gateway, cli, data_dir):
    """NEWCO lists on 2023-06-12: the run says so and fetches only the listed part."""
    result = ingest(cli, symbol="NEWCO", year="2023", products="trades")
    warnings = [line for line in result.stdout.splitlines() if "WARNING" in line]
    assert any("2023-06-12" in line and "2024-01-01" in line for line in warnings), warnings
    entry = manifest_entry(year_folder(data_dir, "NEWCO", 2023), "TRADES")
    assert entry["request"]["start"] == "2023-06-12T00:00:00Z"
    assert entry["request"]["end"] == "2024-01-01T00:00:00Z"
    assert entry["chunks"][0]["start"] == "2023-06-12T00:00:00Z"
    assert len(entry["chunks"]) == 7
    start = ns(datetime(2023, 6, 12, tzinfo=UTC))
    end = ns(datetime(2024, 1, 1, tzinfo=UTC))
    assert entry["records"] == expected_records("XNAS.ITCH", "NEWCO", "trades", start, end, 20)
    assert min(r.params["start"] for r in gateway.requests if r.endpoint == GET_RANGE) == (
        "2023-06-12T00:00:00Z"
    )


# clamping to the dataset


def test_data_last_year_is_clamped_to_the_dataset_end(gateway, cli, data_dir):
    """2025 ends where the dataset ends (2025-06-01): five monthly chunks, none beyond."""
    ingest(cli, products="trades")
    entry = manifest_entry(year_folder(data_dir, "AAPL", 2025), "TRADES")
    assert entry["request"]["start"] == "2025-01-01T00:00:00Z"
    assert entry["request"]["end"] == "2025-06-01T00:00:00Z"
    assert len(entry["chunks"]) == 5
    assert entry["chunks"][-1]["end"] == "2025-06-01T00:00:00Z"
    ends = [r.params["end"] for r in gateway.requests if r.endpoint == GET_RANGE]
    assert len(ends) == 5
    assert max(ends) == "2025-06-01T00:00:00Z"


def test_data_first_year_is_clamped_to_the_dataset_start(gateway, cli, data_dir):
    """2018 starts where the dataset starts (2018-05-01): eight monthly chunks."""
    ingest(cli, year="2018", products="trades")
    entry = manifest_entry(year_folder(data_dir, "AAPL", 2018), "TRADES")
    assert entry["request"]["start"] == "2018-05-01T00:00:00Z"
    assert entry["request"]["end"] == "2019-01-01T00:00:00Z"
    assert len(entry["chunks"]) == 8
    assert entry["chunks"][0]["start"] == "2018-05-01T00:00:00Z"
    assert gateway.count(GET_RANGE) == 8


def test_data_mid_day_dataset_end_ends_the_last_chunk_there(gateway, cli, data_dir):
    """Data available until 12:00 UTC is fetched until exactly 12:00, not to midnight."""
    gateway.set_dataset_range("XNAS.ITCH", "2018-05-01", "2023-03-15T12:00:00Z")
    ingest(cli, symbol="BRK.B", year="2023", products="trades")
    entry = manifest_entry(year_folder(data_dir, "BRK.B", 2023), "TRADES")
    assert entry["request"]["end"] == "2023-03-15T12:00:00Z"
    assert [(c["start"][:10], c["end"]) for c in entry["chunks"]] == [
        ("2023-01-01", "2023-02-01T00:00:00Z"),
        ("2023-02-01", "2023-03-01T00:00:00Z"),
        ("2023-03-01", "2023-03-15T12:00:00Z"),
    ]
    start, end = ns(datetime(2023, 1, 1, tzinfo=UTC)), ns(datetime(2023, 3, 15, 12, tzinfo=UTC))
    assert entry["records"] == expected_records("XNAS.ITCH", "BRK.B", "trades", start, end, 20)
    assert entry["last_ts_recv"] < "2023-03-15T12:00:00Z"


# progress


def test_progress_absent_when_stdout_is_not_a_terminal(gateway, cli, data_dir):
    """Pipes and log files get log lines only, never a redrawn progress bar."""
    result = ingest(cli, products="trades")
    assert "ETA" not in result.output
    assert not re.search(r"\d+/\d+\s+chunks", result.output)
    bar_lines = [line for line in result.output.splitlines() if "━" in line]
    assert all(line[0] in "┏┡" for line in bar_lines), bar_lines  # table borders only


def spawn_cli(slow_gateway, data_dir: Path, *extra: str, term: str = "xterm") -> pexpect.spawn:
    env = {**slow_gateway.env, "TERM": term, "DATA_DIR": str(data_dir)}
    env.pop("NO_COLOR", None)
    args = [
        "-m",
        "backend.jobs.cli",
        "data",
        "--symbol",
        "AAPL",
        "--year",
        "2025",
        "--chunk",
        "month",
    ]
    return pexpect.spawn(
        sys.executable,
        [*args, "--products", "trades", *extra],
        env=env,
        cwd=str(REPO),
        encoding="utf-8",
        timeout=60,
        dimensions=(24, 120),
    )


@pytest.mark.slow
def test_progress_shown_on_a_terminal(slow_gateway, tmp_path):
    """A person at a terminal sees chunks done, size and ETA while the year downloads."""
    child = spawn_cli(slow_gateway, tmp_path / "data")
    child.expect("TRADES")
    child.expect(r"\d+/5")
    child.expect("chunks")
    child.expect("ETA")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert (year_folder(tmp_path / "data", "AAPL", 2025) / "TRADES.dbn.zst").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "term"),
    [((), "dumb"), (("--quiet",), "xterm"), (("--log-json",), "xterm")],
    ids=["term-dumb", "quiet", "log-json"],
)
def test_progress_absent_on_a_terminal_when_asked_for_plain_output(
    slow_gateway, tmp_path, extra, term
):
    """TERM=dumb, --quiet and --log-json keep a terminal free of progress redraws."""
    slow_gateway.sandbox.set_dataset_range("XNAS.ITCH", "2018-05-01", "2025-01-15")
    child = spawn_cli(slow_gateway, tmp_path / "data", *extra, term=term)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "ETA" not in child.before
    assert "status=downloaded" in child.before or '"status": "downloaded"' in child.before


# log formats and levels


def test_log_json_every_line_parses_with_completion_fields(gateway, cli, data_dir):
    """--log-json is machine-readable end to end; completion objects carry the run's facts."""
    result = cli("data", "--symbol", "AAPL", "--year", "2023", "--log-json")
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert objects
    done = [item for item in objects if "status" in item]
    assert sorted((item["product"], item["status"]) for item in done) == [
        ("TBBO", "downloaded"),
        ("TRADES", "downloaded"),
    ]
    for item in done:
        final = year_folder(data_dir) / f"{item['product']}.dbn.zst"
        assert {"symbol", "year", "product", "status", "bytes", "elapsed_s"} <= item.keys()
        assert (item["symbol"], item["year"]) == ("AAPL", 2023)
        assert item["bytes"] == final.stat().st_size
        assert item["records"] == manifest_entry(year_folder(data_dir), item["product"])["records"]
        assert float(item["elapsed_s"]) >= 0
        assert item["level"] == "SUCCESS"


def test_log_json_errors_are_json_on_stderr(gateway, cli, data_dir):
    """A failing run stays machine-readable: the error is one JSON object on stderr."""
    result = cli("data", "--symbol", "NOSUCH", "--year", "2023", "--log-json")
    assert result.exit_code == 2
    errors = [json.loads(line) for line in result.stderr.splitlines()]
    assert [item["level"] for item in errors] == ["ERROR"]
    assert "NOSUCH" in errors[0]["message"]
    assert all(json.loads(line) for line in result.stdout.splitlines())


def test_quiet_keeps_completion_lines_and_drops_info(gateway, cli, data_dir):
    """--quiet is for cron: one line per product, nothing chatty, no tables."""
    result = ingest(cli, "AAPL", "2025", "trades,tbbo", "--quiet")
    assert sorted(line["product"] for line in completions(result.stdout)) == ["TBBO", "TRADES"]
    assert "| INFO" not in result.stdout
    assert "preflight" not in result.stdout
    assert table_rows(result.stdout) == []
    assert len(result.stdout.strip().splitlines()) == 2


def test_quiet_still_shows_warnings(gateway, cli, data_dir):
    """A partial year is worth a line even in --quiet mode."""
    result = ingest(cli, "NEWCO", "2023", "trades", "--quiet")
    assert any("WARNING" in line and "2023-06-12" in line for line in result.stdout.splitlines())
    assert len(completions(result.stdout)) == 1


def test_verbose_shows_debug_lines(gateway, cli, data_dir):
    """-v adds DEBUG lines (the SDK's HTTP requests among them); the default has none."""
    plain = ingest(cli, "AAPL", "2025", "trades")
    assert "| DEBUG" not in plain.stdout
    verbose = ingest(cli, "AAPL", "2025", "trades", "-v", "--force")
    debug = [line for line in verbose.stdout.splitlines() if "| DEBUG" in line]
    assert any("timeseries.get_range" in line for line in debug), debug
    assert len(completions(verbose.stdout)) == 1


def test_data_degraded_days_logged_as_warning_and_exit_0(gateway, cli, data_dir):
    """Reduced-quality days announced by X-Warning reach the operator; the run still succeeds."""
    gateway.degraded_days = {date(2023, 3, 14)}
    result = ingest(cli, "AAPL", "2023", "trades")
    warnings = [line for line in result.stdout.splitlines() if "| WARNING" in line]
    assert any("2023-03-14" in line for line in warnings), result.stdout
    assert (year_folder(data_dir) / "TRADES.dbn.zst").is_file()


# status and verify


@pytest.fixture
def cached(gateway, cli, data_dir) -> Path:
    """AAPL 2025, both products, freshly downloaded; returns the year folder."""
    ingest(cli)
    gateway.reset()
    return year_folder(data_dir, "AAPL", 2025)


def status_states(cli) -> dict[str, str]:
    result = cli("status")
    assert result.exit_code == 0, result.output
    return {row[3]: row[-1] for row in table_rows(result.stdout)}


def test_status_and_verify_healthy_cache_ok(cached, cli, gateway):
    """A fresh cache is 'ok' in status and passes verify, all without a network request."""
    assert status_states(cli) == {"TBBO": "ok", "TRADES": "ok"}
    result = cli("verify")
    assert result.exit_code == 0, result.output
    assert "2 ok, 0 bad" in result.stdout
    assert result.stderr == ""
    assert gateway.requests == []


def test_status_and_verify_corrupted_byte_caught_only_by_verify(cached, cli):
    """status compares sizes (cheap); verify re-hashes and names the damaged file."""
    trades = cached / "TRADES.dbn.zst"
    content = bytearray(trades.read_bytes())
    content[len(content) // 2] ^= 0xFF
    trades.write_bytes(bytes(content))
    assert status_states(cli) == {"TBBO": "ok", "TRADES": "ok"}
    result = cli("verify")
    assert result.exit_code == 1
    assert str(trades) in result.stderr
    assert "sha256" in result.stderr
    assert "TBBO" not in result.stderr
    assert "1 ok, 1 bad" in result.stdout


def test_status_and_verify_missing_manifest_reported(cached, cli):
    """Files without a manifest are listed as unrecorded and fail verification."""
    (cached / "manifest.json").unlink()
    assert status_states(cli) == {"TBBO": "no manifest entry", "TRADES": "no manifest entry"}
    result = cli("verify")
    assert result.exit_code == 1
    assert str(cached / "TRADES.dbn.zst") in result.stderr
    assert str(cached / "TBBO.dbn.zst") in result.stderr


def test_status_and_verify_truncated_file_size_mismatch(cached, cli):
    """A truncated file shows as 'size mismatch' and fails verification."""
    trades = cached / "TRADES.dbn.zst"
    trades.write_bytes(trades.read_bytes()[: trades.stat().st_size // 2])
    assert status_states(cli) == {"TBBO": "ok", "TRADES": "size mismatch"}
    result = cli("verify")
    assert result.exit_code == 1
    assert str(trades) in result.stderr


def test_status_json_lists_each_cached_product(cached, cli):
    """status --json gives scripts the inventory with sizes, records and manifest state."""
    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert sorted(item["product"] for item in items) == ["TBBO", "TRADES"]
    for item in items:
        entry = manifest_entry(cached, item["product"])
        assert (item["symbol"], item["year"], item["manifest"]) == ("AAPL", 2025, "ok")
        assert item["bytes"] == (cached / f"{item['product']}.dbn.zst").stat().st_size
        assert item["records"] == entry["records"] > 0


def test_status_symbol_and_year_filters_narrow_the_list(gateway, cli, data_dir):
    """--symbol and --year select one symbol-year out of several."""
    ingest(cli, "AAPL", "2025", "trades")
    ingest(cli, "AAPL", "2018", "trades")
    ingest(cli, "MSFT", "2025", "trades")

    def listed(*flags: str) -> list[tuple[str, int]]:
        result = cli("status", "--json", *flags)
        assert result.exit_code == 0, result.output
        return [(item["symbol"], item["year"]) for item in json.loads(result.stdout)]

    assert listed() == [("AAPL", 2018), ("AAPL", 2025), ("MSFT", 2025)]
    assert listed("--symbol", "aapl") == [("AAPL", 2018), ("AAPL", 2025)]
    assert listed("--year", "2025") == [("AAPL", 2025), ("MSFT", 2025)]
    assert listed("--symbol", "AAPL", "--year", "2025") == [("AAPL", 2025)]
    assert listed("--symbol", "NVDA") == []
    text = cli("status", "--symbol", "MSFT", "--year", "2025").stdout
    assert [row[:4] for row in table_rows(text)] == [["XNAS.ITCH", "MSFT", "2025", "TRADES"]]


def test_verify_symbol_filter_skips_other_damaged_symbols(gateway, cli, data_dir):
    """verify --symbol checks only that symbol, so one bad file does not fail the others."""
    ingest(cli, "AAPL", "2025", "trades")
    ingest(cli, "MSFT", "2025", "trades")
    trades = year_folder(data_dir, "AAPL", 2025) / "TRADES.dbn.zst"
    trades.write_bytes(trades.read_bytes()[:-1] + b"\0")
    assert cli("verify", "--symbol", "MSFT").exit_code == 0
    assert cli("verify", "--symbol", "AAPL", "--year", "2025").exit_code == 1


def test_status_does_not_import_databento_or_pandas(cached, data_dir):
    """status reads local files only: no SDK import, no API key needed."""
    probe = (
        "import sys\n"
        "from backend.jobs.cli.app import app\n"
        "try:\n"
        f"    app(['status', '--data-dir', {str(data_dir)!r}])\n"
        "except SystemExit as done:\n"
        "    assert done.code in (0, None), done.code\n"
        "print('IMPORTED', sorted(m for m in ('databento', 'pandas') if m in sys.modules))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "DATABENTO_API_KEY"}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert "IMPORTED []" in out
    assert "TRADES" in out


# help and version


@pytest.mark.parametrize("command", ["data", "status", "verify"])
def test_help_of_each_command_shows_example_and_exit_codes(cli, command):
    """Operators learn usage and exit codes from --help without reading the source."""
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout
    assert "Exit codes" in result.stdout


def test_version_prints_the_installed_version(cli):
    """--version answers which release is installed, and exits 0."""
    result = cli("--version")
    assert result.exit_code == 0
    assert version("bento-ingest") in result.stdout
