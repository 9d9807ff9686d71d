"""The foundation contract, end to end through the real SDK and the sandbox gateway."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import databento
import pytest

from backend.jobs.core.dbn import read_metadata
from backend.sandbox import expected_records
from tests.helpers import (
    FIXTURES,
    YEAR_2023,
    completions,
    decompressed,
    leftovers,
    written_files,
    year_folder,
)

REPO = Path(__file__).resolve().parents[1]


def test_data_writes_both_products_at_the_documented_paths(gateway, cli, data_dir):
    """A symbol-year becomes TRADES.dbn.zst and TBBO.dbn.zst, readable by the SDK."""
    result = cli("data", "--symbol", "AAPL", "--year", "2023")
    assert result.exit_code == 0, result.output
    for product, schema in (("TRADES", "trades"), ("TBBO", "tbbo")):
        store = databento.DBNStore.from_bytes(
            (year_folder(data_dir) / f"{product}.dbn.zst").read_bytes()
        )
        expected = expected_records("XNAS.ITCH", "AAPL", schema, *YEAR_2023, 20)
        assert store.schema == schema
        assert len(list(store)) == expected > 0


def test_data_ends_each_product_with_one_key_value_line(gateway, cli, data_dir):
    """Scripts parse symbol, year, product, status, bytes and elapsed_s from one line each."""
    result = cli("data", "--symbol", "AAPL", "--year", "2023")
    lines = completions(result.stdout)
    assert [(line["product"], line["status"]) for line in lines] == [
        ("TRADES", "downloaded"),
        ("TBBO", "downloaded"),
    ] or sorted(line["product"] for line in lines) == ["TBBO", "TRADES"]
    for line in lines:
        size = (year_folder(data_dir) / f"{line['product']}.dbn.zst").stat().st_size
        assert (line["symbol"], line["year"], int(line["bytes"])) == ("AAPL", "2023", size)


def test_data_rerun_sends_no_request(gateway, cli, data_dir):
    """Idempotent: a cached symbol-year is skipped without touching the network."""
    cli("data", "--symbol", "AAPL", "--year", "2023")
    gateway.reset()
    result = cli("data", "--symbol", "AAPL", "--year", "2023")
    assert result.exit_code == 0
    assert gateway.requests == []
    assert [line["status"] for line in completions(result.stdout)] == ["skipped", "skipped"]


def test_data_force_downloads_again(gateway, cli, data_dir):
    """--force re-fetches a cached product."""
    cli("data", "--symbol", "AAPL", "--year", "2023", "--products", "trades")
    gateway.reset()
    again = ("data", "--symbol", "AAPL", "--year", "2023", "--products", "trades", "--force")
    result = cli(*again, "--chunk", "month")
    assert result.exit_code == 0
    assert gateway.count("timeseries.get_range") == 12
    assert completions(result.stdout)[0]["status"] == "downloaded"


def test_data_products_trades_fetches_only_trades(gateway, cli, data_dir):
    """--products limits both the requests and the files."""
    result = cli("data", "--symbol", "AAPL", "--year", "2023", "--products", "TRADES")
    assert result.exit_code == 0
    assert {r.params["schema"] for r in gateway.requests if r.params.get("schema")} == {"trades"}
    assert sorted(p.name for p in year_folder(data_dir).glob("*.dbn.zst")) == ["TRADES.dbn.zst"]


def test_data_serves_real_sample_content_identical(gateway, cli, data_dir):
    """A real Databento stream is cached with the same metadata and records, byte for byte
    once decompressed (the zstd framing is the tool's canonical one, not the server's)."""
    sample = FIXTURES / "test_data.trades.dbn.zst"
    gateway.add_fixture(sample)
    gateway.set_dataset_range("XNAS.ITCH", "2020-12-28", "2020-12-29")
    result = cli("data", "--symbol", "NVDA", "--year", "2020", "--products", "trades")
    assert result.exit_code == 0, result.output
    cached = year_folder(data_dir, "NVDA", 2020) / "TRADES.dbn.zst"
    ours, served = (read_metadata(path) for path in (cached, sample))
    assert served.limit == 4  # the sample was fetched with limit=4; this request has none
    assert ours.limit is None
    for field in ("dataset", "schema", "start", "end", "symbols", "stype_in", "stype_out"):
        assert getattr(ours, field) == getattr(served, field), field
    assert (ours.mappings, ours.partial, ours.not_found) == (
        served.mappings,
        served.partial,
        served.not_found,
    )

    def records(path: Path) -> bytes:
        stream = decompressed(path)
        return stream[8 + int.from_bytes(stream[4:8], "little") :]

    assert records(cached) == records(sample)


def test_data_missing_key_exits_3_before_any_request(gateway, cli, data_dir, monkeypatch):
    """Without DATABENTO_API_KEY nothing is sent and the message names the variable."""
    monkeypatch.delenv("DATABENTO_API_KEY")
    result = cli("data", "--symbol", "AAPL", "--year", "2023")
    assert result.exit_code == 3
    assert "DATABENTO_API_KEY" in result.stderr
    assert gateway.requests == []


def test_data_rejected_key_exits_3_with_the_server_reason(gateway, cli, data_dir, monkeypatch):
    """A 401 is a credentials problem, not a retryable failure."""
    monkeypatch.setenv("DATABENTO_API_KEY", "not-a-databento-key-0123456789ab")
    result = cli("data", "--symbol", "AAPL", "--year", "2023")
    assert result.exit_code == 3
    assert "auth_authentication_failed" in result.stderr
    assert len(gateway.requests) == 1


@pytest.mark.parametrize(
    "fault",
    [{"cut_after_bytes": 300}, {"status": 500}],
    ids=["stream-cut", "server-error"],
)
def test_data_failed_stream_leaves_no_file_behind(gateway, cli, data_dir, fault):
    """A broken download exits 1; no final file and no temp file exist afterwards."""
    from backend.sandbox import Fault

    gateway.add_fault(Fault(endpoint="timeseries.get_range", times=100, **fault))
    result = cli("data", "--symbol", "AAPL", "--year", "2023", "--retries", "0")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(year_folder(data_dir).glob("*.dbn.zst"))
    assert leftovers(data_dir) == []


BAD_INPUTS = [
    (["--year", "1899"], 2, "year"),
    (["--year", "10000"], 2, "year"),
    (["--year", "abc"], 2, "year"),
    (["--year", "2017"], 2, "available from 2018-05-01"),
    (["--year", "2026"], 2, "available from 2018-05-01"),
    (["--symbol", "../x"], 2, "symbol"),
    (["--symbol", "a/b"], 2, "symbol"),
    (["--symbol", ""], 2, "symbol"),
    (["--symbol", "   "], 2, "symbol"),
    (["--symbol", "AA\x07PL"], 2, "control"),
    (["--symbol", ".."], 2, "symbol"),
    (["--symbol", "NOSUCHTICKER"], 2, "not found"),
    (["--products", "quotes"], 2, "product"),
    (["--products", ""], 2, "product"),
    (["--dataset", "nope"], 2, "dataset"),
    (["--dataset", "NOPE.NOPE"], 2, "dataset"),
    (["--chunk", "hour"], 2, "chunk"),
    (["--jobs", "0"], 2, "jobs"),
    (["--gateway", "https://db-key@127.0.0.1:1"], 2, "gateway"),
    (["--log-level", "LOUD"], 2, "log-level"),
]


@pytest.mark.parametrize(("override", "code", "says"), BAD_INPUTS, ids=repr)
def test_data_bad_input_exits_with_one_clear_line_and_writes_nothing(
    gateway, cli, data_dir, override, code, says
):
    """Every bad input has a documented exit code, one line saying what is wrong, no files."""
    args = {"--symbol": "AAPL", "--year": "2023"}
    args.update(dict(zip(override[::2], override[1::2], strict=True)))
    result = cli("data", *[word for pair in args.items() for word in pair])
    assert result.exit_code == code, result.output
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert error_lines, result.output
    assert says.lower() in result.stderr.lower()
    assert "Traceback" not in result.output
    assert not written_files(data_dir)
    assert gateway.count("timeseries.get_range") == 0


def test_api_key_never_appears_in_output_logs_or_files(gateway, cli, data_dir, api_key):
    """The key shows up nowhere: not in logs, errors, manifests or data files."""
    from backend.sandbox import Fault

    outputs = [cli("data", "--symbol", "AAPL", "--year", "2023", "-v").output]
    gateway.add_fault(Fault(endpoint="timeseries.get_range", status=503, times=100))
    outputs.append(cli("data", "--symbol", "MSFT", "--year", "2023", "--retries", "1").output)
    outputs.append(cli("data", "--symbol", "AAPL", "--year", "2023", "--log-json").output)
    assert all(api_key not in text for text in outputs)
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert api_key.encode() not in path.read_bytes()


def test_cached_rerun_does_not_import_databento(gateway, cli, data_dir):
    """A cached re-run stays cheap: neither databento nor pandas is imported."""
    cli("data", "--symbol", "AAPL", "--year", "2023")
    gateway.reset()
    probe = (
        "import sys\n"
        "from backend.jobs.cli.app import app\n"
        "try:\n"
        f"    app(['data', '--symbol', 'AAPL', '--year', '2023', '--data-dir', {str(data_dir)!r}])"
        "\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        "print('IMPORTED', sorted(m for m in ('databento', 'pandas') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=os.environ
    ).stdout
    assert "IMPORTED []" in out
    assert gateway.requests == []


@pytest.mark.slow
def test_make_data_runs_invoke_and_the_cli_end_to_end(gateway, data_dir):
    """The documented chain: make -> invoke -> Typer CLI, with the exact log contract."""
    done = subprocess.run(
        ["make", "--no-print-directory", "data", "SYMBOL=AAPL", "YEAR=2023", "PRODUCTS=trades"],
        cwd=REPO,
        env=os.environ,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "invoke data --symbol" in done.stdout
    assert [line["status"] for line in completions(done.stdout)] == ["downloaded"]
    assert (year_folder(data_dir) / "TRADES.dbn.zst").stat().st_size > 0
    assert not (year_folder(data_dir) / "TBBO.dbn.zst").exists()
