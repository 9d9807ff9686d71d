"""The public door into the cache (issue 18): `backend.jobs.api` and `bento-ingest path`.

Through the real SDK against the sandbox gateway, and the local S3 server for a bucket's cache;
nothing is mocked.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import databento
import numpy as np
import pytest

from backend.jobs import api, errors
from backend.sandbox.s3server import LocalS3Server
from tests.helpers import plain_get_range

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "bento-api"
PREFIX = "lab/cache"
URL = f"s3://{BUCKET}/{PREFIX}"
TRADES_KEY = f"{PREFIX}/raw/databento/AAPL/2023/TRADES.dbn.zst"
TRADES = Path("raw/databento/AAPL/2023/TRADES.dbn.zst")


def fetch(cli, *extra: str, symbol: str = "AAPL") -> None:
    result = cli(*("data", "--symbol", symbol, "--year", "2023", "--products", "trades", *extra))
    assert result.exit_code == 0, result.output


@pytest.fixture
def cached(gateway, data_dir, cli) -> Path:
    """AAPL 2023 TRADES fetched by the CLI into DATA_DIR; the final file's path."""
    fetch(cli)
    return data_dir / TRADES


def body_reads(s3: LocalS3Server, key: str) -> int:
    return sum(1 for request in s3.recorded("GET") if request.key == key)


@pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")  # the SDK's to_df, pandas 3.1
def test_open_cached_after_data_gives_the_records_of_one_full_year_request(
    cached, gateway, tmp_path
):
    """Downstream reads exactly what a single plain SDK request for the year returns."""
    single = databento.DBNStore.from_file(plain_get_range(gateway, ["AAPL"], tmp_path / "one.dbn"))
    store = api.open_cached("AAPL", 2023, "trades")
    try:
        assert np.array_equal(store.to_ndarray(), single.to_ndarray())
        assert store.to_df().equals(single.to_df())
    finally:
        store.reader.close()
        single.reader.close()


def test_manifest_entry_gives_the_lineage_of_the_cached_file(cached):
    """The sha256, records and request a derivation records as its input."""
    entry = api.manifest_entry("AAPL", "2023", "TRADES")
    assert entry["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    store = api.open_cached("AAPL", 2023)
    assert entry["records"] == len(store.to_ndarray())
    store.reader.close()
    assert entry["request"]["symbols"] == ["AAPL"]
    assert entry["request"]["schema"] == "trades"
    assert (entry["engine"], entry["job_id"]) == ("stream", None)
    assert entry["location"] == str(cached)
    assert entry["first_ts_recv"] <= entry["last_ts_recv"]


def test_cached_path_with_a_flipped_byte_raises_integrity_error_naming_file_and_hashes(cached):
    """A file that no longer hashes to its manifest entry is never handed out."""
    expected = api.manifest_entry("AAPL", 2023, "trades")["sha256"]
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.raises(api.IntegrityError) as caught:
        api.open_cached("AAPL", 2023, "trades")
    actual = hashlib.sha256(bytes(data)).hexdigest()
    assert (caught.value.path, caught.value.expected, caught.value.actual) == (
        str(cached),
        expected,
        actual,
    )
    assert str(cached) in str(caught.value)
    assert expected in str(caught.value)
    assert actual in str(caught.value)
    assert isinstance(caught.value, api.IngestError)
    assert api.cached_path("AAPL", 2023, "trades", verify=False) == cached


@pytest.mark.parametrize(
    ("symbol", "product", "command"),
    [
        ("MSFT", "trades", "bento-ingest data --symbol MSFT --year 2023 --products trades"),
        ("AAPL", "tbbo", "bento-ingest data --symbol AAPL --year 2023 --products tbbo"),
    ],
)
def test_cached_path_of_a_missing_product_raises_not_cached_naming_the_command(
    cached, symbol, product, command
):
    """What is not cached says how to fetch it (never a download from a read)."""
    with pytest.raises(api.NotCachedError) as caught:
        api.cached_path(symbol, 2023, product)
    assert caught.value.command == command
    assert command in str(caught.value)
    assert isinstance(caught.value, api.IngestError)


def test_not_cached_command_names_an_explicit_data_dir(gateway, tmp_path):
    """The command fetches into the same data dir the caller read from."""
    folder = tmp_path / "elsewhere"
    with pytest.raises(api.NotCachedError) as caught:
        api.cached_path("AAPL", 2023, "trades", data_dir=folder)
    assert caught.value.command.endswith(f"--data-dir {folder}")


def test_cached_path_from_a_bucket_downloads_once_and_reuses_the_copy(
    gateway, s3, cli, tmp_path, monkeypatch
):
    """A bucket's file is copied under the work dir once, then reused while it matches."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fetch(cli, "--data-dir", URL, "--work-dir", str(tmp_path / "scratch"))
    s3.requests.clear()
    first = api.cached_path("AAPL", 2023, "trades", data_dir=URL)
    assert first.is_relative_to(tmp_path / "xdg" / "bento-ingest" / "work" / BUCKET)
    assert body_reads(s3, TRADES_KEY) == 1
    inode = first.stat().st_ino
    again = api.open_cached("AAPL", 2023, "trades", data_dir=URL)
    assert body_reads(s3, TRADES_KEY) == 1  # reused: no second download
    assert first.stat().st_ino == inode
    entry = api.manifest_entry("AAPL", 2023, "trades", data_dir=URL)
    assert hashlib.sha256(first.read_bytes()).hexdigest() == entry["sha256"]
    assert entry["location"] == f"{URL}/{TRADES}"
    assert len(again.to_ndarray()) == entry["records"]
    again.reader.close()
    data = bytearray(first.read_bytes())
    data[-10] ^= 0xFF
    first.write_bytes(bytes(data))
    assert api.cached_path("AAPL", 2023, "trades", data_dir=URL) == first
    assert body_reads(s3, TRADES_KEY) == 2  # a damaged copy is downloaded again
    assert hashlib.sha256(first.read_bytes()).hexdigest() == entry["sha256"]


def test_cached_path_of_a_damaged_object_raises_integrity_error_and_keeps_no_copy(
    gateway, s3, cli, tmp_path
):
    """An object that no longer hashes to its entry is named by its URL; nothing is cached."""
    fetch(cli, "--data-dir", URL, "--work-dir", str(tmp_path / "scratch"))
    client = s3.client()
    data = bytearray(client.get_object(Bucket=BUCKET, Key=TRADES_KEY)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=TRADES_KEY, Body=bytes(data))
    with pytest.raises(api.IntegrityError) as caught:
        api.cached_path("AAPL", 2023, "trades", data_dir=URL, work_dir=tmp_path / "reads")
    assert caught.value.path == f"{URL}/{TRADES}"
    assert caught.value.actual == hashlib.sha256(bytes(data)).hexdigest()
    assert not [path for path in (tmp_path / "reads").rglob("*") if path.is_file()]


def test_ingest_writes_the_files_the_cli_writes_and_then_skips(gateway, cli, tmp_path):
    """`ingest()` is the `data` command's work: same files, one result per product."""
    fetch(cli, "--data-dir", str(tmp_path / "by-cli"))
    results = api.ingest(["AAPL"], [2023], ["trades"], data_dir=tmp_path / "by-api")
    assert [(r.symbol, r.year, r.product.name, r.status) for r in results] == [
        ("AAPL", 2023, "TRADES", "downloaded")
    ]
    assert (tmp_path / "by-api" / TRADES).read_bytes() == (
        tmp_path / "by-cli" / TRADES
    ).read_bytes()
    again = api.ingest("AAPL", 2023, "trades", data_dir=tmp_path / "by-api")
    assert [r.status for r in again] == ["skipped"]


def test_ingest_without_a_key_raises_credentials_error(gateway, data_dir, monkeypatch):
    """A library call raises the typed error where the CLI would exit 3."""
    monkeypatch.delenv("DATABENTO_API_KEY")
    with pytest.raises(api.CredentialsError, match="DATABENTO_API_KEY"):
        api.ingest("AAPL", 2023, "trades")


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"jobs": 0}, api.InvalidInputError),
        ({"chunk": "hour"}, api.InvalidInputError),
        ({"max_cost": 0.0}, api.BudgetError),
    ],
)
def test_ingest_bad_options_raise_typed_errors(gateway, data_dir, options, error):
    """Bad options and budgets are refused before anything is downloaded."""
    with pytest.raises(error):
        api.ingest("AAPL", 2023, "trades", **options)
    assert not (data_dir / TRADES).exists()


def test_ingest_of_an_unknown_symbol_raises_invalid_input_naming_it(gateway, data_dir):
    """What the CLI reports and exits 2 for is one typed error naming the symbol-year."""
    with pytest.raises(api.InvalidInputError, match="NOSUCH"):
        api.ingest(["NOSUCH"], [2023], "trades")


def test_every_error_of_the_tool_is_importable_from_the_api():
    """Downstream catches what the API raises without importing internals."""
    classes = [
        value
        for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, errors.IngestError)
    ]
    assert {cls.__name__ for cls in classes} <= set(api.__all__)
    assert issubclass(api.NotCachedError, api.IngestError)
    assert issubclass(api.IntegrityError, api.IngestError)


def console_script() -> list[str]:
    """The installed `bento-ingest`, else the module it runs."""
    installed = Path(sys.executable).parent / "bento-ingest"
    return [str(installed)] if installed.exists() else [sys.executable, "-m", "backend.jobs.cli"]


def test_bento_ingest_path_prints_the_verified_path(cached):
    """`bento-ingest path SYMBOL YEAR` prints the file, for shell pipelines."""
    done = subprocess.run(
        [*console_script(), "path", "AAPL", "2023"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{cached}\n"
    assert Path(done.stdout.strip()).is_file()


def test_path_command_failures_are_one_line_exit_1(cached, cli):
    """Not cached names the command; a damaged file names itself; both exit 1."""
    missing = cli("path", "MSFT", "2023")
    assert missing.exit_code == 1
    assert "bento-ingest data --symbol MSFT --year 2023 --products trades" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    cached.write_bytes(cached.read_bytes()[:-1] + b"\0")
    damaged = cli("path", "AAPL", "2023", "--product", "trades")
    assert damaged.exit_code == 1
    assert str(cached) in damaged.stderr
    assert len(damaged.stderr.strip().splitlines()) == 1
    assert cli("path", "AAPL", "20x3").exit_code == 2


def test_console_script_is_declared_and_installed_by_make():
    """`pip install` (and `make`'s bootstrap, rerun when pyproject changes) installs it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["bento-ingest"] == "backend.jobs.cli:main"
    makefile = (ROOT / "Makefile").read_text()
    assert "$(READY): pyproject.toml" in makefile
    assert "pip install --quiet -e" in makefile
    installed = Path(sys.executable).parent / "bento-ingest"
    if installed.exists():
        done = subprocess.run(
            [str(installed), "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert "path" in done.stdout
