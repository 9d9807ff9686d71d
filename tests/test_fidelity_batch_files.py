"""Batch jobs validated by their files' content, whatever Databento's undocumented choices.

Databento documents neither whether a split period without records gets a file, nor whether
each file's header carries its own period or the job's range, and `list_files` may give a null
`hash`. The sandbox plays each choice (`batch_empty_files`, `batch_file_headers`,
`batch_file_hashes`); every combination must give the file one full-range get_range gives, and
a paid job whose files cannot be used must never trap its user.

Real SDK against the sandbox gateway; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from backend.jobs.core.ranges import TimeRange
from backend.jobs.engines.batchfiles import coverage_problem
from backend.jobs.engines.batchjob import FileContent
from backend.sandbox import Fault
from backend.sandbox.batchfiles import BatchFile, JobFiles
from tests.helpers import YEAR_2023, completions, decompressed, plain_get_range, year_folder

SUBMIT = "batch.submit_job"
DOWNLOAD = "batch/download"
GET_RANGE = "timeseries.get_range"
DAY_NS = 86_400 * 10**9
# Listed Jan-Mar and Jun-Dec 2023: the job covers the year, April and May hold no record, and
# one get_range of the year reports the symbol `partial`.
GAP_SYMBOL = "GAPCO"
MODES = list(itertools.product(("present", "absent"), ("period", "job"), ("sha256", "null")))


def use_modes(gateway, empty_files: str, headers: str, hashes: str) -> None:
    gateway.batch_empty_files = empty_files
    gateway.batch_file_headers = headers
    gateway.batch_file_hashes = hashes


def add_gap_symbol(gateway) -> None:
    gateway.add_symbol(
        GAP_SYMBOL,
        [(date(2000, 1, 1), date(2023, 4, 1), 701), (date(2023, 6, 1), date(2100, 1, 1), 702)],
    )


def run_batch(cli, *extra: str, symbols: str = "AAPL"):
    return cli(
        *("data", "--symbols", symbols, "--year", "2023", "--products", "trades"),
        *("--engine", "batch", *extra),
    )


def job_record(data_dir: Path, symbol: str = "AAPL") -> dict:
    path = year_folder(data_dir, symbol) / ".parts" / "TRADES" / "batch-job.json"
    return json.loads(path.read_text())


def assert_equals_one_get_range(gateway, data_dir: Path, tmp_path: Path, symbol: str) -> None:
    single = tmp_path / f"{symbol}.single.dbn.zst"
    single.unlink(missing_ok=True)  # the SDK writes only new files
    plain_get_range(gateway, [symbol], single)
    merged = year_folder(data_dir, symbol) / "TRADES.dbn.zst"
    assert decompressed(merged) == decompressed(single), symbol


# Every combination that changes the engine's path, each equal to one get_range of the year


@pytest.mark.parametrize(
    ("chunk", "symbol", "modes"),
    [
        # month: every combination; the gap leaves two months without records
        *[("month", GAP_SYMBOL, modes) for modes in MODES],
        # week: 2023 ends with a week of one Sunday, without records
        ("week", "AAPL", ("present", "job", "null")),
        ("week", "AAPL", ("absent", "period", "sha256")),
        # day: 365 files (weekends without records); one run, the furthest from the default
        ("day", "AAPL", ("absent", "job", "null")),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, tuple) else str(value),
)
def test_batch_run_in_every_file_mode_equals_one_full_year_get_range(
    gateway, cli, data_dir, tmp_path, chunk, symbol, modes
):
    """Files present or not for empty periods, headers of their period or of the job, hashes
    or none: the merged file is byte for byte the DBN stream of one full-year get_range."""
    gateway.records_per_day = 2
    add_gap_symbol(gateway)
    use_modes(gateway, *modes)
    result = run_batch(cli, "--chunk", chunk, symbols=symbol)
    assert result.exit_code == 0, result.output
    assert completions(result.stdout)[0]["status"] == "downloaded"
    assert gateway.count(SUBMIT) == 1
    assert_equals_one_get_range(gateway, data_dir, tmp_path, symbol)
    manifest = json.loads((year_folder(data_dir, symbol) / "manifest.json").read_text())
    files = manifest["products"]["TRADES"]["batch"]["files"]
    assert all(len(file["sha256"]) == 64 for file in files)  # data files hashed as served


def test_universe_job_with_job_range_headers_gives_each_symbol_its_own_request(
    gateway, cli, data_dir, tmp_path
):
    """One job for three symbols whose files all carry the job's range and symbology: each
    symbol's file is what a get_range for it alone gives (its header is never a union); the
    job fetched again for one of them still counts and checks every record of its files."""
    gateway.records_per_day = 2
    add_gap_symbol(gateway)
    use_modes(gateway, "absent", "job", "null")
    result = run_batch(cli, "--chunk", "month", symbols=f"AAPL,MSFT,{GAP_SYMBOL}")
    assert result.exit_code == 0, result.output
    assert gateway.count(SUBMIT) == 1
    for symbol in ("AAPL", "MSFT", GAP_SYMBOL):
        assert_equals_one_get_range(gateway, data_dir, tmp_path, symbol)
    (year_folder(data_dir, "MSFT") / "TRADES.dbn.zst").unlink()
    again = run_batch(cli, "--chunk", "month", "--force", symbols="MSFT")
    assert again.exit_code == 0, again.output
    assert "already paid" in again.output
    assert gateway.count(SUBMIT) == 1
    assert_equals_one_get_range(gateway, data_dir, tmp_path, "MSFT")


# A null hash: the file is checked by decoding it; a decode failure still fetches it again


@pytest.mark.parametrize(
    ("corrupted_downloads", "exit_code"),
    [(1, 0), (20, 1)],
    ids=["once-fetched-again", "every-time-job-unusable"],
)
def test_null_hash_file_that_fails_to_decode_is_fetched_again_until_served_alike(
    gateway, cli, data_dir, tmp_path, corrupted_downloads, exit_code
):
    """Without a hash, bad bytes are caught by the decode and fetched again (free); the very
    same bad bytes served twice are the job's own: it is reported unusable, not retried on."""
    gateway.records_per_day = 2
    use_modes(gateway, "present", "period", "null")
    target = "xnas-itch-20230201-20230228.trades.dbn.zst"
    gateway.add_fault(
        Fault(
            endpoint=DOWNLOAD,
            corrupt_at_byte=200,
            times=corrupted_downloads,
            match=lambda params: params["filename"] == target,
        )
    )
    result = run_batch(cli, "--chunk", "month")
    assert result.exit_code == exit_code, result.output
    fetched = [r for r in gateway.requests if r.endpoint == DOWNLOAD]
    assert sum(r.params["filename"] == target for r in fetched) == 2
    if exit_code == 0:
        assert_equals_one_get_range(gateway, data_dir, tmp_path, "AAPL")
    else:
        assert "cannot be used" in result.output
        assert job_record(data_dir)["failed"]


# A job that fails validation: reported once, kept, and never a trap


def on_first_listing(gateway, change: Callable[[JobFiles], None]) -> None:
    """Change the first job's files just before list_files answers (a hook, not a fault:
    the match callable runs as the request arrives and declines the fault)."""
    changed: list[str] = []

    def hook(params: dict[str, str]) -> bool:
        if not changed:
            changed.append(params["job_id"])
            change(gateway.batch_book.get(params["job_id"]).files())
        return False

    gateway.add_fault(Fault(endpoint="batch.list_files", delay_s=0.001, match=hook))


def largest(files: JobFiles) -> int:
    return max(range(len(files.data)), key=lambda index: files.data[index].size)


def add_overlapping_copy(files: JobFiles) -> None:
    """A second file holding the records of another (e.g. a period written twice)."""
    original = files.data[largest(files)]
    copy = original.path.with_name("copy-" + original.filename)
    shutil.copyfile(original.path, copy)
    files.data.append(replace(original, filename=copy.name, path=copy))


def drop_a_file(files: JobFiles) -> None:
    """A data file missing from the listing: its records are not in the job's files."""
    del files.data[largest(files)]


def truncate_as_listed(files: JobFiles) -> None:
    """A file cut short by the service itself: its listed size and sha256 are of the cut bytes."""
    index = largest(files)
    original = files.data[index]
    cut = original.path.read_bytes()[: original.size // 2]
    original.path.write_bytes(cut)
    files.data[index] = BatchFile(
        original.filename, original.path, len(cut), hashlib.sha256(cut).hexdigest()
    )


@pytest.mark.parametrize(
    ("change", "wrong", "way_out"),
    [
        (add_overlapping_copy, "overlap", ("--engine", "stream")),
        (drop_a_file, "the job reports", ("--force",)),
        (truncate_as_listed, "truncated", ("--engine", "stream")),
    ],
    ids=["overlapping-file", "record-count", "service-file-truncated"],
)
def test_job_failing_validation_is_reported_once_kept_and_left_by_stream_or_force(
    gateway, cli, data_dir, tmp_path, change, wrong, way_out
):
    """A paid job whose files cannot make the year: exit 1 with one line (job, what is wrong,
    where its files are, the way out); a plain re-run repeats it without paying again;
    --engine stream or --force fetch the year without it."""
    gateway.records_per_day = 2
    on_first_listing(gateway, change)
    failed = run_batch(cli, "--chunk", "month")
    assert failed.exit_code == 1
    job_id = gateway.batch_jobs()[0]["id"]
    kept = data_dir / "raw" / "databento" / ".batch" / job_id
    line = next(line for line in failed.output.splitlines() if "cannot be used" in line)
    message = line[line.index("batch job") :]  # after the log prefix (time, level)
    for needed in (job_id, wrong, str(kept), "--engine stream", "--force"):
        assert needed in message
    assert failed.output.count("cannot be used") == 1
    assert wrong in job_record(data_dir)["failed"]
    assert any(kept.iterdir())
    assert not (year_folder(data_dir) / "TRADES.dbn.zst").exists()

    downloads = gateway.count(DOWNLOAD)
    again = run_batch(cli, "--chunk", "month")
    assert again.exit_code == 1
    assert message in again.output
    assert again.output.count("cannot be used") == 1
    assert gateway.count(SUBMIT) == 1
    assert gateway.count(DOWNLOAD) == downloads

    out = run_batch(cli, "--chunk", "month", *way_out)
    assert out.exit_code == 0, out.output
    assert completions(out.stdout)[0]["status"] == "downloaded"
    assert gateway.count(SUBMIT) == (2 if way_out == ("--force",) else 1)
    assert_equals_one_get_range(gateway, data_dir, tmp_path, "AAPL")
    assert any(kept.iterdir())  # still there for inspection


def test_job_listing_a_data_file_without_https_url_is_unusable_not_retried(
    gateway, cli, data_dir, monkeypatch
):
    """`urls` is nullable: a data file without an https URL cannot be fetched, so the job is
    reported unusable once (its record says why) instead of failing every re-run."""
    from backend.sandbox import batchapi

    listed = batchapi._file_entry

    def without_urls(gw, job, batch_file):
        entry = listed(gw, job, batch_file)
        return entry if batch_file.filename.endswith(".json") else {**entry, "urls": None}

    monkeypatch.setattr(batchapi, "_file_entry", without_urls)
    result = run_batch(cli, "--chunk", "month")
    assert result.exit_code == 1
    assert "no https URL" in result.output
    assert result.output.count("cannot be used") == 1
    assert "no https URL" in job_record(data_dir)["failed"]
    assert gateway.count(DOWNLOAD) == 0


# The validation itself, as a table


def content(name: str, records: int, first_day: int | None = None, last_day: int | None = None):
    """A file's content with records on days counted from 2023-01-01 (noon)."""
    start = YEAR_2023[0] + DAY_NS // 2

    def stamp(day: int | None) -> int | None:
        return None if day is None else start + day * DAY_NS

    return FileContent(name, records, stamp(first_day), stamp(last_day))


YEAR = TimeRange(*YEAR_2023)


@pytest.mark.parametrize(
    ("files", "record_count", "wrong"),
    [
        ([content("a", 5, 0, 30), content("b", 5, 31, 60)], 10, ""),
        ([content("b", 5, 31, 60), content("a", 5, 0, 30)], 10, ""),  # listed out of order
        ([content("a", 5, 0, 30), content("empty", 0), content("b", 5, 31, 60)], 10, ""),
        ([content("a", 5, 0, 30), content("b", 5, 31, 60)], None, ""),  # no count reported
        ([], 0, ""),
        ([content("a", 5, 0, 30), content("b", 5, 20, 60)], 10, "overlap"),
        ([content("a", 5, 0, 30), content("b", 5, 31, 400)], 10, "outside the job's range"),
        ([content("a", 5, 0, 30), content("b", 5, 31, 60)], 11, "the job reports 11"),
    ],
    ids=[
        "tiling",
        "any-order",
        "header-only-file",
        "count-unknown",
        "no-file-no-record",
        "overlap",
        "outside",
        "count",
    ],
)
def test_coverage_problem_judges_files_by_their_records(files, record_count, wrong):
    """Coverage is decided by the records alone: order, overlap, range and count."""
    found = coverage_problem(files, YEAR, record_count)
    if wrong:
        assert wrong in found
    else:
        assert found == ""


# The sandbox's knobs, seen through the SDK


@pytest.fixture
def sdk(gateway):
    import databento

    return databento.Historical(key=os.environ["DATABENTO_API_KEY"], gateway=gateway.gateway)


def first_week_job(sdk) -> str:
    """A day-split job over 2023-01-01 (Sunday) to 01-08: five trading days, two not."""
    job = sdk.batch.submit_job(
        dataset="XNAS.ITCH",
        symbols=["AAPL"],
        schema="trades",
        start="2023-01-01",
        end="2023-01-08",
        encoding="dbn",
        compression="zstd",
        split_duration="day",
    )
    return job["id"]


@pytest.mark.parametrize(
    ("modes", "data_files", "hashed"),
    [
        (("present", "period", "sha256"), 7, True),
        (("absent", "period", "sha256"), 5, True),
        (("present", "job", "null"), 7, False),
    ],
    ids=["default", "absent", "job-headers-null-hashes"],
)
def test_sandbox_file_knobs_shape_list_files_and_headers(
    gateway, sdk, tmp_path, modes, data_files, hashed
):
    """Each knob changes what the service is free to do, and nothing else."""
    from backend.jobs.core.dbn import read_metadata

    use_modes(gateway, *modes)
    job_id = first_week_job(sdk)
    listed = sdk.batch.list_files(job_id)
    assert all((file["hash"] is not None) == hashed for file in listed)
    data = [file["filename"] for file in listed if not file["filename"].endswith(".json")]
    assert len(data) == data_files
    job_range = (YEAR_2023[0], YEAR_2023[0] + 7 * DAY_NS)
    for path in sdk.batch.download(job_id, tmp_path):
        if path.name in data:
            metadata = read_metadata(path)
            assert ((metadata.start, metadata.end) == job_range) == (modes[1] == "job")


def test_sandbox_reset_restores_the_file_knobs(gateway):
    """Knobs are settings like any other: a reset brings back the documented defaults."""
    use_modes(gateway, "absent", "job", "null")
    gateway.reset()
    assert (
        gateway.batch_empty_files,
        gateway.batch_file_headers,
        gateway.batch_file_hashes,
    ) == ("present", "period", "sha256")
