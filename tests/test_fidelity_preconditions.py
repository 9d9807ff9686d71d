"""Nothing is paid before every local precondition holds; a file is adopted only if its own header
is the request's; `status` shows what a file is and the batch jobs recorded.

Real SDK against the sandbox gateway (and a real S3 protocol server for `--work-dir`); the
adoption rule itself is pure and tested as a table.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.jobs.cache.decision import CacheKey, FileHeader, Fit, adoption
from backend.jobs.core.ranges import TimeRange, date_ns, year_range
from tests.helpers import completions, plain_get_range, year_folder

GET_RANGE, SUBMIT = "timeseries.get_range", "batch.submit_job"
FREE = {"metadata.get_dataset_range", "symbology.resolve"}  # metadata: never billed
TRADES_2023 = ("data", "--symbol", "AAPL", "--year", "2023", "--products", "trades")


def status_json(cli) -> list[dict]:
    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def warnings_about(output: str, text: str) -> list[str]:
    return [line for line in output.splitlines() if "WARNING" in line and text in line]


# the adoption rule, pure

KEY = CacheKey("XNAS.ITCH", "trades", "AAPL", 2023)
NOW_2026 = date_ns(datetime(2026, 12, 2, tzinfo=UTC).date())


def header(
    start: str = "2023-01-01", end: str | None = "2024-01-01", **fields: object
) -> FileHeader:
    day = datetime.fromisoformat
    return FileHeader(
        dataset=str(fields.get("dataset", "XNAS.ITCH")),
        schema=str(fields.get("schema", "trades")),
        symbols=tuple(fields.get("symbols", ("AAPL",))),  # type: ignore[arg-type]
        stype_in="raw_symbol",
        stype_out="instrument_id",
        span=None
        if end is None
        else TimeRange(date_ns(day(start).date()), date_ns(day(end).date())),
    )


def span(start: str, end: str) -> TimeRange:
    return TimeRange(
        date_ns(datetime.fromisoformat(start).date()), date_ns(datetime.fromisoformat(end).date())
    )


@pytest.mark.parametrize(
    ("file", "expected", "fit", "why"),
    [
        (header(), None, Fit.ADOPT, ""),
        (header(end="2023-07-01"), None, Fit.ASK, "covers 2023-01-01..2023-07-01, part of"),
        (header(start="2023-03-28"), None, Fit.ASK, "covers 2023-03-28..2024-01-01"),
        (
            header(end="2023-07-01"),
            year_range(2023),
            Fit.REFUSE,
            "covers 2023-01-01..2023-07-01, not the year 2023-01-01..2024-01-01",
        ),
        (header(start="2023-03-28"), span("2023-03-28", "2024-01-01"), Fit.ADOPT, ""),
        (
            header(end="2023-07-01"),
            span("2023-01-01", "2023-09-01"),
            Fit.REFUSE,
            "not 2023-01-01..2023-09-01 (all XNAS.ITCH has of 2023 for AAPL)",
        ),
        (header(symbols=("MSFT",)), None, Fit.REFUSE, "symbols ['MSFT'] (asked ['AAPL'])"),
        (header(schema="tbbo"), None, Fit.REFUSE, "schema 'tbbo' (asked 'trades')"),
        (header(dataset="EQUS.MINI"), None, Fit.REFUSE, "dataset 'EQUS.MINI'"),
        (header("2022-07-01", "2023-07-01"), None, Fit.REFUSE, "outside the year 2023"),
        (header(end=None), None, Fit.REFUSE, "without an end"),
    ],
)
def test_adoption_takes_only_a_header_that_is_the_request(file, expected, fit, why):
    """Identity and the exact range; a part of a closed year only if the dataset has no more."""
    verdict = adoption(KEY, file, now_ns=NOW_2026, expected=expected)
    assert verdict.fit is fit
    assert why in verdict.why


@pytest.mark.parametrize(
    ("end", "fit"),
    [("2026-11-01", Fit.ADOPT), ("2026-12-02", Fit.ADOPT), ("2026-12-03", Fit.ASK)],
)
def test_adoption_of_the_current_year_so_far_needs_no_network(end, fit):
    """January 1 to a moment already past is the current year so far, as a recorded fetch is."""
    key = CacheKey("XNAS.ITCH", "trades", "AAPL", 2026)
    verdict = adoption(key, header("2026-01-01", end), now_ns=NOW_2026)
    assert verdict.fit is fit


# adoption through the CLI


@pytest.fixture
def half_year(gateway, cli, data_dir, tmp_path) -> Path:
    """What a plain SDK request for 2023-01-01..07-01 gives, where AAPL 2023 TRADES belongs."""
    final = year_folder(data_dir) / "TRADES.dbn.zst"
    final.parent.mkdir(parents=True)
    plain_get_range(gateway, ["AAPL"], final, end="2023-07-01T00:00:00Z")
    gateway.reset()
    return final


def test_half_year_file_without_manifest_is_fetched_again_with_one_warning(half_year, gateway, cli):
    """A closed year needs its whole range: the half-year file is named, then replaced."""
    (before,) = status_json(cli)
    assert before["manifest"] != "ok"
    assert "2023-01-01..2023-07-01" in before["problem"]
    result = cli(*TRADES_2023)
    assert result.exit_code == 0, result.output
    expected = (
        f"AAPL 2023 TRADES: the file at {half_year} covers 2023-01-01..2023-07-01, "
        "not the year 2023-01-01..2024-01-01; fetching it again"
    )
    assert len(warnings_about(result.output, "fetching it again")) == 1
    assert expected in result.output
    assert completions(result.stdout)[0]["status"] == "downloaded"
    (after,) = status_json(cli)
    assert (after["manifest"], after["start"][:10], after["end"][:10]) == (
        "ok",
        "2023-01-01",
        "2024-01-01",
    )


@pytest.mark.parametrize(
    ("symbols", "schema", "wrong"),
    [(["MSFT"], "trades", "symbols ['MSFT']"), (["AAPL"], "tbbo", "schema 'tbbo'")],
)
def test_file_of_another_symbol_or_schema_is_foreign_and_fetched_again(
    gateway, cli, data_dir, symbols, schema, wrong
):
    """Whatever its range, a file whose header names another request is never adopted."""
    final = year_folder(data_dir) / "TRADES.dbn.zst"
    final.parent.mkdir(parents=True)
    plain_get_range(gateway, symbols, final, schema=schema)
    gateway.reset()
    (before,) = status_json(cli)
    assert before["manifest"] == "foreign"
    assert wrong in before["problem"]
    result = cli(*TRADES_2023)
    assert result.exit_code == 0, result.output
    (line,) = warnings_about(result.output, "fetching it again")
    assert f"the file at {final} holds another request's data" in line
    assert wrong in line
    assert completions(result.stdout)[0]["status"] == "downloaded"
    assert gateway.count("batch.submit_job") == 0


@pytest.mark.parametrize(("dataset", "year"), [("XNAS.ITCH", "2025"), ("EQUS.MINI", "2023")])
def test_file_clamped_to_the_dataset_is_adopted_after_free_metadata_only(
    gateway, cli, data_dir, dataset, year
):
    """A range cut by the dataset's end (or start) is confirmed by free calls, never re-paid."""
    flags = ("data", "--symbol", "AAPL", "--year", year, "--products", "trades")
    assert cli(*flags, "--dataset", dataset).exit_code == 0
    folder = data_dir / "raw" / "databento"
    folder = folder if dataset == "XNAS.ITCH" else folder / "datasets" / dataset
    (folder / "AAPL" / year / "manifest.json").unlink()
    gateway.reset()
    result = cli(*flags, "--dataset", dataset, "--max-cost", "0")
    assert result.exit_code == 0, result.output
    assert "adopted" in result.stdout
    assert completions(result.stdout)[0]["status"] == "skipped"
    assert {request.endpoint for request in gateway.requests} <= FREE
    assert warnings_about(result.output, "fetching it again") == []


def test_dry_run_counts_a_file_clamped_to_the_dataset_as_cached_and_writes_nothing(
    gateway, cli, data_dir
):
    """The dry run asks the same free questions, counts the file as cached, records nothing."""
    flags = ("data", "--symbol", "AAPL", "--year", "2025", "--products", "trades")
    assert cli(*flags).exit_code == 0
    manifest = year_folder(data_dir, "AAPL", 2025) / "manifest.json"
    manifest.unlink()
    gateway.reset()
    result = cli(*flags, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "cached" in result.stdout
    assert "to download" not in result.stdout
    assert {request.endpoint for request in gateway.requests} <= FREE
    assert not manifest.exists()


# every local precondition before anything is asked


@pytest.mark.parametrize("where", [".batch", ".locks/.batch"])
@pytest.mark.parametrize(
    ("engine", "nothing_asked"),
    [(("--engine", "batch"), True), (("--engine", "auto", "--batch-above", "1B"), False)],
)
def test_symlinked_batch_folder_is_refused_before_any_submit(
    gateway, cli, data_dir, tmp_path, where, engine, nothing_asked
):
    """The job's folders are checked before it is paid for (with auto, once it is chosen)."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    link = data_dir / "raw" / "databento" / where
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(foreign)
    result = cli(*TRADES_2023, *engine)
    assert result.exit_code == 1, result.output  # a working folder that cannot be used
    assert f"{link} is a symbolic link" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert gateway.count(SUBMIT) == 0
    assert gateway.count(GET_RANGE) == 0
    if nothing_asked:
        assert gateway.requests == []
    assert list(foreign.iterdir()) == []


# --work-dir, with a bucket


@pytest.fixture
def bucket(s3_server, monkeypatch: pytest.MonkeyPatch) -> str:
    s3_server.reset()
    s3_server.create_bucket("bento-pre")
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return "s3://bento-pre/cache"


def unwritable_by_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "work"


def test_unwritable_work_dir_exits_2_naming_the_flag_before_any_request(
    gateway, bucket, cli, tmp_path
):
    """The work dir is the user's input: named by its flag, checked before anything is asked.

    (A folder under a file: tests run as root, who writes through permission bits.)"""
    work = unwritable_by_file(tmp_path)
    result = cli(*TRADES_2023, "--data-dir", bucket, "--work-dir", str(work))
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert f"--work-dir {work} is not writable: " in line
    assert line.endswith("pick a writable folder")
    assert gateway.requests == []


# status: recorded batch jobs


def job_record(job_id: str | None, **extra: object) -> dict:
    since = datetime.now(UTC) - timedelta(hours=2, seconds=30)
    return {
        "format": 1,
        "job_id": job_id,
        "cost_usd": 1.25 if job_id else None,
        "submitted_since": since.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "request": {
            "dataset": "XNAS.ITCH",
            "symbols": ["AAPL"],
            "schema": "trades",
            "start": "2023-01-01T00:00:00Z",
            "end": "2024-01-01T00:00:00Z",
            "split_duration": "month",
        },
        **extra,
    }


@pytest.mark.parametrize(
    ("record", "shown", "state", "cost"),
    [
        (job_record("XNAS-20261202-AB12CD34EF"), "XNAS-20261202-AB12CD34EF", "submitted", "$1.25"),
        (job_record(None), "(submitting)", "submitting", "-"),
        (
            job_record("XNAS-20261202-FA11ED0000", failed="records outside the job's range"),
            "XNAS-20261202-FA11ED0000",
            "failed validation",
            "$1.25",
        ),
    ],
)
def test_status_lists_a_recorded_batch_job_without_asking_databento(
    gateway, cli, data_dir, record, shown, state, cost
):
    """A job paid for and not yet published is visible: its id, state, age and cost."""
    parts = year_folder(data_dir) / ".parts" / "TRADES"
    parts.mkdir(parents=True)
    since = datetime.now(UTC) - timedelta(hours=2, seconds=30)  # parametrised at collection
    record = {**record, "submitted_since": since.isoformat(timespec="seconds")}
    (parts / "batch-job.json").write_text(json.dumps(record))
    result = cli("status")
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if shown in line]
    assert state in row
    assert "2h 00m" in row
    assert cost in row
    assert "AAPL 2023 TRADES" in row
    if record.get("failed"):
        assert "records outside the job's range" in result.stdout
    (item,) = status_json(cli)
    assert (item["product"], item["manifest"]) == ("TRADES", "missing")
    job = item["batch_job"]
    assert (job["job_id"], job["state"]) == (record["job_id"], state)
    assert 7200 <= job["age_s"] < 7300
    assert job["cost_usd"] == record["cost_usd"]
    assert gateway.requests == []


def test_status_without_recorded_jobs_shows_no_job_table_and_null_jobs(gateway, cli, data_dir):
    """A published product carries no job; the cache table stays as it was."""
    assert cli(*TRADES_2023).exit_code == 0
    result = cli("status")
    assert "Batch jobs" not in result.stdout
    (item,) = status_json(cli)
    assert (item["manifest"], item["batch_job"]) == ("ok", None)
