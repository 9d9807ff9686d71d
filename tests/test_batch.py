"""The batch engine: one Databento batch job per group, paid once, resumed, verified, merged
into the same files as streaming.

Real SDK against the sandbox gateway's batch endpoints; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.sandbox import Fault
from tests.helpers import completions, decompressed, leftovers, plain_get_range, year_folder

SUBMIT = "batch.submit_job"
DOWNLOAD = "batch/download"
GET_RANGE = "timeseries.get_range"
BATCH = ("--engine", "batch")


def run_batch(cli, *extra: str, symbol: str = "AAPL"):
    return cli("data", "--symbol", symbol, "--year", "2023", "--products", "trades", *BATCH, *extra)


def manifest_entry(data_dir: Path, product: str = "TRADES", symbol: str = "AAPL") -> dict:
    manifest = json.loads((year_folder(data_dir, symbol) / "manifest.json").read_text())
    return manifest["products"][product]


def downloads(gateway) -> list[dict[str, str]]:
    return [request.params for request in gateway.requests if request.endpoint == DOWNLOAD]


def test_batch_file_equals_one_full_year_request(gateway, cli, data_dir, tmp_path):
    """One job, its monthly files merged: the same DBN stream as one get_range for the year."""
    result = run_batch(cli)
    assert result.exit_code == 0, result.output
    single = plain_get_range(gateway, ["AAPL"], tmp_path / "single.dbn.zst")
    assert decompressed(year_folder(data_dir) / "TRADES.dbn.zst") == decompressed(single)
    assert gateway.count(SUBMIT) == 1
    assert gateway.count(GET_RANGE) == 1  # the plain request above, none from the tool
    assert len(downloads(gateway)) == 12  # the data files, one per month; not the zip
    assert completions(result.stdout)[0]["status"] == "downloaded"
    assert not (data_dir / "raw" / "databento" / ".batch").exists() or not any(
        (data_dir / "raw" / "databento" / ".batch").iterdir()
    )
    assert leftovers(data_dir) == []


def test_manifest_records_engine_job_cost_and_served_hashes(gateway, cli, data_dir):
    """The manifest names the job, what it cost and every file as served."""
    result = run_batch(cli)
    assert result.exit_code == 0, result.output
    entry = manifest_entry(data_dir)
    job = gateway.batch_jobs()[0]
    assert entry["engine"] == "batch"
    assert entry["batch"]["job_id"] == job["id"]
    assert entry["batch"]["cost_usd"] == pytest.approx(job["cost_usd"])
    served = {file["filename"] for file in entry["batch"]["files"]}
    assert len(served) >= 12
    assert "metadata.json" in served
    assert all(len(file["sha256"]) == 64 for file in entry["batch"]["files"])


def test_cached_batch_product_is_skipped_without_requests(gateway, cli, data_dir):
    """Once published, a batch-made file is a cache hit like any other."""
    assert run_batch(cli).exit_code == 0
    gateway.reset()
    result = run_batch(cli)
    assert result.exit_code == 0, result.output
    assert completions(result.stdout)[0]["status"] == "skipped"
    assert gateway.requests == []


def test_force_downloads_the_recorded_job_again_without_a_new_submit(gateway, cli, data_dir):
    """--force within the job's 30 days: its files again, free; no second charge."""
    assert run_batch(cli).exit_code == 0
    first = manifest_entry(data_dir)["batch"]["job_id"]
    result = run_batch(cli, "--force")
    assert result.exit_code == 0, result.output
    assert gateway.count(SUBMIT) == 1
    assert manifest_entry(data_dir)["batch"]["job_id"] == first
    assert "already paid" in result.output


def test_auto_uses_batch_only_above_the_threshold(gateway, cli, data_dir):
    """--engine auto: a 1 KB threshold sends the year to a batch job, the default streams it."""
    args = (
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
    streamed = cli(*args)
    assert streamed.exit_code == 0, streamed.output
    assert gateway.count(SUBMIT) == 0
    assert gateway.count(GET_RANGE) == 12
    batched = cli(*args, "--force", "--batch-above", "1KB")
    assert batched.exit_code == 0, batched.output
    assert gateway.count(SUBMIT) == 1
    assert gateway.count(GET_RANGE) == 12
    assert "> --batch-above" in batched.output


def test_engine_from_the_environment(gateway, cli, data_dir, monkeypatch):
    """DATABENTO_ENGINE=batch without the flag."""
    monkeypatch.setenv("DATABENTO_ENGINE", "batch")
    result = cli("data", "--symbol", "AAPL", "--year", "2023", "--products", "trades")
    assert result.exit_code == 0, result.output
    assert gateway.count(SUBMIT) == 1


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (("--engine", "fast"), {}, "--engine 'fast' is not an engine"),
        (("--batch-above", "5 parsecs"), {}, "--batch-above '5 parsecs' is not a size"),
        (("--batch-timeout", "soon"), {}, "--batch-timeout 'soon' is not a duration"),
        ((), {"DATABENTO_ENGINE": "turbo"}, "DATABENTO_ENGINE 'turbo' is not an engine"),
    ],
)
def test_bad_engine_settings_exit_2_before_any_request(
    gateway, cli, data_dir, monkeypatch, flags, env, message
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = cli("data", "--symbol", "AAPL", "--year", "2023", *flags)
    assert result.exit_code == 2
    assert message in result.output
    assert gateway.count(SUBMIT) == 0
    assert gateway.count(GET_RANGE) == 0


def test_dry_run_submits_nothing_and_says_which_engine_and_why(gateway, cli, data_dir):
    result = cli(
        *("data", "--symbol", "AAPL", "--year", "2023", "--dry-run", "--batch-above", "1KB"),
    )
    assert result.exit_code == 0, result.output
    assert gateway.count(SUBMIT) == 0
    assert gateway.count(DOWNLOAD) == 0
    assert "TRADES: batch, estimate" in result.output
    assert "> --batch-above" in result.output
    assert not data_dir.exists() or not list(data_dir.rglob("batch-job.json"))


def test_universe_group_is_one_job_per_product(gateway, cli, data_dir, tmp_path):
    """Two symbols x two products: two jobs, and each symbol's file equals its own request."""
    result = cli("data", "--symbols", "AAPL,MSFT", "--year", "2023", *BATCH)
    assert result.exit_code == 0, result.output
    jobs = gateway.batch_jobs()
    assert len(jobs) == 2
    assert {job["schema"] for job in jobs} == {"trades", "tbbo"}
    assert all(sorted(job["symbols"].split(",")) == ["AAPL", "MSFT"] for job in jobs)
    for symbol in ("AAPL", "MSFT"):
        single = plain_get_range(gateway, [symbol], tmp_path / f"{symbol}.dbn.zst")
        merged = year_folder(data_dir, symbol) / "TRADES.dbn.zst"
        assert decompressed(merged) == decompressed(single), symbol


def test_cut_downloads_resume_with_range(gateway, cli, data_dir, tmp_path):
    """A connection cut mid-file: the retry asks only for the bytes that did not arrive."""
    gateway.records_per_day = 5000  # files of a few hundred kB, so a cut keeps a prefix
    cut = 300_000
    gateway.add_fault(Fault(endpoint=DOWNLOAD, cut_after_bytes=cut, times=3))
    result = run_batch(cli)
    assert result.exit_code == 0, result.output
    resumed_at = [
        int(params["range"].removeprefix("bytes=").split("-")[0])
        for params in downloads(gateway)
        if params["range"]
    ]
    assert len(resumed_at) == 3
    assert all(cut - 2**16 <= start <= cut for start in resumed_at)
    single = plain_get_range(gateway, ["AAPL"], tmp_path / "single.dbn.zst")
    assert decompressed(year_folder(data_dir) / "TRADES.dbn.zst") == decompressed(single)


def test_corrupted_download_is_caught_and_fetched_again(gateway, cli, data_dir, tmp_path):
    """A flipped byte fails the sha256 (or the decode): the file is fetched whole again."""
    gateway.add_fault(Fault(endpoint=DOWNLOAD, corrupt_at_byte=500))
    result = run_batch(cli)
    assert result.exit_code == 0, result.output
    assert len(downloads(gateway)) == 13
    single = plain_get_range(gateway, ["AAPL"], tmp_path / "single.dbn.zst")
    assert decompressed(year_folder(data_dir) / "TRADES.dbn.zst") == decompressed(single)


def test_lost_submit_answer_is_found_not_submitted_again(gateway, cli, data_dir):
    """The submit reached the service but its answer was cut: looked up, never paid twice."""
    gateway.add_fault(Fault(endpoint=SUBMIT, cut_after_bytes=10))
    result = run_batch(cli)
    assert result.exit_code == 0, result.output
    assert gateway.count(SUBMIT) == 1
    assert gateway.count("batch.list_jobs") >= 1


def test_rate_limited_submit_is_retried(gateway, cli, data_dir):
    gateway.add_fault(Fault(endpoint=SUBMIT, status=429, retry_after=0))
    result = run_batch(cli)
    assert result.exit_code == 0, result.output
    assert len(gateway.batch_jobs()) == 1


def test_unfinished_job_times_out_then_next_run_picks_it_up(gateway, cli, data_dir):
    """--batch-timeout: exit 1, the job stays recorded; the next run pays nothing more."""
    gateway.batch_processing_s = 2.0
    result = run_batch(cli, "--batch-timeout", "1s")
    assert result.exit_code == 1
    assert "--batch-timeout" in result.output
    assert "run the same command again later" in result.output
    gateway.batch_processing_s = 0.0
    time.sleep(1.0)
    again = run_batch(cli)
    assert again.exit_code == 0, again.output
    assert gateway.count(SUBMIT) == 1


def test_expired_job_is_resubmitted_with_a_warning_within_budget(gateway, cli, data_dir):
    """A recorded job that expired needs a new, billed job: only within --max-cost."""
    gateway.batch_processing_s = 2.0
    assert run_batch(cli, "--batch-timeout", "1s").exit_code == 1
    gateway.expire_job(gateway.batch_jobs()[0]["id"])
    gateway.batch_processing_s = 0.0
    refused = run_batch(cli, "--max-cost", "0")
    assert refused.exit_code == 2
    assert "expired" in refused.output
    assert "exceeds the budget" in refused.output
    assert gateway.count(SUBMIT) == 1
    result = run_batch(cli, "--max-cost", "100")
    assert result.exit_code == 0, result.output
    assert gateway.count(SUBMIT) == 2
    assert "expired" in result.output
    assert manifest_entry(data_dir)["batch"]["job_id"] == gateway.batch_jobs()[-1]["id"]


@pytest.fixture
def process_env(gateway) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_kill_9_after_submit_resumes_without_a_new_submit(gateway, data_dir, process_env):
    """SIGKILL while the job is processing: the re-run finds the recorded job and pays nothing."""
    gateway.batch_processing_s = 2.0
    command = [
        *(sys.executable, "-m", "backend.jobs.cli", "data", "--symbol", "AAPL", "--year", "2023"),
        *("--products", "trades", *BATCH),
    ]
    process = subprocess.Popen(
        command, env=process_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = year_folder(data_dir) / ".parts" / "TRADES" / "batch-job.json"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text()).get("job_id"):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert gateway.count(SUBMIT) == 1
    rerun = subprocess.run(
        command, env=process_env, capture_output=True, text=True, timeout=60, check=False
    )
    assert rerun.returncode == 0, rerun.stderr
    assert gateway.count(SUBMIT) == 1
    assert (year_folder(data_dir) / "TRADES.dbn.zst").exists()


def test_sigterm_while_waiting_for_the_job_exits_143_and_keeps_it(gateway, data_dir, process_env):
    """A stopped run leaves the job recorded; the same command later finishes it, unpaid."""
    gateway.batch_processing_s = 30.0
    command = [
        *(sys.executable, "-m", "backend.jobs.cli", "data", "--symbol", "AAPL", "--year", "2023"),
        *("--products", "trades", *BATCH),
    ]
    process = subprocess.Popen(command, env=process_env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while gateway.count("batch.get_job_details") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 143
    assert "stopped by SIGTERM" in stderr
    state = json.loads((year_folder(data_dir) / ".parts" / "TRADES" / "batch-job.json").read_text())
    assert state["job_id"] == gateway.batch_jobs()[0]["id"]


@pytest.mark.parametrize(
    "url",
    ["https://evil.example.com/v0/batch/download/x", "http://127.0.0.1:9/v0/batch/download/x"],
)
def test_the_api_key_goes_only_to_databento_over_https(url, tmp_path):
    """A list_files answer pointing elsewhere never receives the key."""
    from backend.jobs.client.databento import DatabentoClient
    from backend.jobs.client.jobfiles import JobFile
    from backend.jobs.errors import IngestError
    from backend.jobs.settings import Secret

    client = DatabentoClient(Secret("db-" + "a" * 29), "https://127.0.0.1:9")
    file = JobFile("f.dbn.zst", 10, "0" * 64, url)
    with pytest.raises(IngestError, match="not sending the API key"):
        client.download_file(file, tmp_path / "f.partial", "JOB")
    assert not (tmp_path / "f.partial").exists()


def test_files_of_unexpected_periods_are_merged_after_the_download(
    gateway, cli, data_dir, tmp_path
):
    """Weekly files start on Sundays (Databento's weeks), not where --chunk week would cut:
    the files are ordered by their own headers and merged once all are in."""
    result = run_batch(cli, "--chunk", "week")
    assert result.exit_code == 0, result.output
    assert gateway.batch_jobs()[0]["split_duration"] == "week"
    single = plain_get_range(gateway, ["AAPL"], tmp_path / "single.dbn.zst")
    assert decompressed(year_folder(data_dir) / "TRADES.dbn.zst") == decompressed(single)
