"""The year-scale engine: chunks, resume, retries, merge equivalence, locks, disk and signals."""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import databento
import pytest

from backend.sandbox import Fault, expected_records
from tests.helpers import completions, decompressed, leftovers, plain_get_range, year_folder

MARCH = "2023-03-01"
# month chunks: these tests cut, kill and resume a year between its 12 requests
AAPL_TRADES_2023 = ("data", "--symbol", "AAPL", "--year", "2023", "--products", "trades")
AAPL_TRADES_2023 += ("--chunk", "month")


def starts(gateway) -> collections.Counter[str]:
    """How often each chunk (by its start date) was requested from the gateway."""
    return collections.Counter(
        r.params["start"][:10] for r in gateway.requests if r.endpoint == "timeseries.get_range"
    )


def march_fault(**fault: object) -> Fault:
    """A fault on the get_range requests of the March 2023 chunk only."""
    return Fault(
        endpoint="timeseries.get_range",
        match=lambda params: params["start"].startswith(MARCH),
        **fault,
    )


def test_stream_cut_in_one_chunk_refetches_only_that_chunk(gateway, cli, data_dir, tmp_path):
    """A cut stream costs one chunk, not the year; the result equals an uninterrupted run."""
    cli(*AAPL_TRADES_2023, "--data-dir", str(tmp_path / "reference"))
    gateway.reset()
    gateway.add_fault(march_fault(cut_after_bytes=120, times=1))
    result = cli(*AAPL_TRADES_2023)
    assert result.exit_code == 0, result.output
    counts = starts(gateway)
    assert counts.pop(MARCH) == 2
    assert set(counts.values()) == {1}
    assert len(counts) == 11
    reference = year_folder(tmp_path / "reference") / "TRADES.dbn.zst"
    assert (year_folder(data_dir) / "TRADES.dbn.zst").read_bytes() == reference.read_bytes()


def test_server_errors_are_retried_with_a_log_line_each(gateway, cli, data_dir):
    """503 twice then success: the run succeeds and says why it retried."""
    gateway.add_fault(march_fault(status=503, times=2))
    result = cli(*AAPL_TRADES_2023)
    assert result.exit_code == 0, result.output
    retries = [line for line in result.stdout.splitlines() if "retry" in line and "503" in line]
    assert len(retries) == 2
    assert starts(gateway)[MARCH] == 3


def test_rate_limit_waits_for_retry_after(gateway, cli, data_dir):
    """429 with Retry-After: 1 is honoured before the chunk is asked for again."""
    gateway.add_fault(march_fault(status=429, retry_after=1, times=1))
    began = time.monotonic()
    result = cli(*AAPL_TRADES_2023)
    assert result.exit_code == 0, result.output
    assert time.monotonic() - began >= 1.0
    assert starts(gateway)[MARCH] == 2


@pytest.mark.parametrize(
    ("status", "detail", "code"),
    [
        (401, None, 3),
        (422, {"case": "data_schema_not_fully_available", "message": "not available"}, 2),
        (402, None, 1),
    ],
)
def test_client_errors_are_never_retried(gateway, cli, data_dir, status, detail, code):
    """401/402/422 will not change on a retry: one request, then the documented exit code."""
    gateway.add_fault(march_fault(status=status, detail=detail, times=1))
    result = cli(*AAPL_TRADES_2023)
    assert result.exit_code == code, result.output
    assert starts(gateway)[MARCH] == 1
    assert not (year_folder(data_dir) / "TRADES.dbn.zst").exists()


@pytest.mark.parametrize(("product", "schema"), [("trades", "trades"), ("tbbo", "tbbo")])
def test_merged_file_equals_a_single_full_year_request(
    gateway, cli, data_dir, tmp_path, product, schema
):
    """Twelve monthly requests merged == one request for the year, metadata and records.

    MSFT changes instrument_id mid-2023, so the merged symbology has two intervals.
    """
    result = cli("data", "--symbol", "MSFT", "--year", "2023", "--products", product)
    assert result.exit_code == 0, result.output
    single = plain_get_range(gateway, ["MSFT"], tmp_path / "single.dbn.zst", schema=schema)
    merged = year_folder(data_dir, "MSFT") / f"{product.upper()}.dbn.zst"
    assert decompressed(merged) == decompressed(single)
    intervals = databento.DBNStore.from_bytes(merged.read_bytes()).mappings["MSFT"]
    assert len(intervals) == 2


def test_truncated_final_file_is_detected_and_downloaded_again(gateway, cli, data_dir):
    """A final file whose size disagrees with the manifest is never taken for a cache hit."""
    cli(*AAPL_TRADES_2023)
    final = year_folder(data_dir) / "TRADES.dbn.zst"
    good = final.read_bytes()
    final.write_bytes(good[: len(good) // 2])
    result = cli(*AAPL_TRADES_2023)
    assert result.exit_code == 0
    assert "re-downloading" in result.stdout
    assert final.read_bytes() == good


def test_corrupted_byte_is_caught_by_verify_and_downloaded_again(gateway, cli, data_dir):
    """Same size, one byte flipped: --verify re-hashes, reports it and fetches it again."""
    cli(*AAPL_TRADES_2023)
    final = year_folder(data_dir) / "TRADES.dbn.zst"
    good = bytearray(final.read_bytes())
    bad = good.copy()
    bad[len(bad) // 2] ^= 0xFF
    final.write_bytes(bad)
    result = cli(*AAPL_TRADES_2023, "--verify")
    assert result.exit_code == 0
    assert "sha256" in result.stdout
    assert final.read_bytes() == good


def test_file_without_manifest_is_adopted_without_downloading(gateway, cli, data_dir):
    """A file cached by the foundation version (no manifest) is validated and adopted."""
    cli(*AAPL_TRADES_2023)
    (year_folder(data_dir) / "manifest.json").unlink()
    gateway.reset()
    result = cli(*AAPL_TRADES_2023)
    assert result.exit_code == 0
    assert gateway.count("timeseries.get_range") == 0
    assert "adopted" in result.stdout
    assert (year_folder(data_dir) / "manifest.json").exists()


def test_manifest_describes_file_request_and_chunks(gateway, cli, data_dir):
    """The manifest is the downstream input hash: sha256, counts, exact request, chunks."""
    import hashlib
    import json

    cli(*AAPL_TRADES_2023)
    manifest = json.loads((year_folder(data_dir) / "manifest.json").read_text())
    entry = manifest["products"]["TRADES"]
    final = year_folder(data_dir) / "TRADES.dbn.zst"
    assert entry["sha256"] == hashlib.sha256(final.read_bytes()).hexdigest()
    assert entry["bytes"] == final.stat().st_size
    assert entry["records"] == expected_records(
        "XNAS.ITCH", "AAPL", "trades", 1672531200 * 10**9, 1704067200 * 10**9, 20
    )
    assert entry["request"] == {
        "dataset": "XNAS.ITCH",
        "schema": "trades",
        "symbols": ["AAPL"],
        "stype_in": "raw_symbol",
        "stype_out": "instrument_id",
        "start": "2023-01-01T00:00:00Z",
        "end": "2024-01-01T00:00:00Z",
        "chunking": "month",
    }
    assert len(entry["chunks"]) == 12
    assert sum(chunk["records"] for chunk in entry["chunks"]) == entry["records"]
    assert {"databento", "databento-dbn", "bento-ingest"} <= set(entry["versions"])


def test_disk_full_exits_1_and_leaves_nothing_at_the_final_path(gateway, data_dir, tmp_path):
    """ENOSPC while writing: a clear message, exit 1, no final file, no temp file."""
    if not shutil.which("unshare"):
        pytest.skip("needs util-linux unshare to mount a tiny tmpfs")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    script = (
        f"mount -t tmpfs -o size=24k tmpfs {tiny} && "
        f"{sys.executable} -m backend.jobs.cli data --symbol AAPL --year 2023 --retries 1 "
        f"--data-dir {tiny}; code=$?; ls -aR {tiny}; exit $code"
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    if "mount" in done.stderr and "permission" in done.stderr.lower():
        pytest.skip("mounting a tmpfs is not permitted here")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "No space left on device" in done.stderr
    assert f"under {tiny}/raw/databento/AAPL/2023" in done.stderr
    assert "MB free there" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "TRADES.dbn.zst" not in done.stdout.split("Summary")[-1].replace(".TRADES", "")
    assert ".tmp" not in done.stdout.split("\n\n", 1)[-1]


# --- processes: kill -9, Ctrl-C and two runs at once, against a throttled gateway -----------------


def cli_process(slow, data_dir: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backend.jobs.cli",
            *AAPL_TRADES_2023,
            "--jobs",
            "2",
            "--data-dir",
            str(data_dir),
            *extra,
        ],
        env=slow.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished_parts(data_dir: Path) -> list[Path]:
    return sorted((year_folder(data_dir) / ".parts" / "TRADES").glob("*.dbn.zst"))


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the run to progress"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("parts_before_kill", [0, 5])
def test_kill_9_then_rerun_resumes_without_refetching_finished_chunks(
    slow_gateway, tmp_path, parts_before_kill
):
    """SIGKILL at any point loses at most the chunks in flight; the re-run completes the year."""
    data_dir = tmp_path / "data"
    run = cli_process(slow_gateway, data_dir)
    if parts_before_kill:
        wait_for(lambda: len(finished_parts(data_dir)) >= parts_before_kill)
    else:
        wait_for(lambda: bool(leftovers(data_dir)))  # killed mid-stream of the first chunks
    run.send_signal(signal.SIGKILL)
    run.communicate()
    rerun_reusing_kept_parts(slow_gateway, data_dir)
    assert leftovers(data_dir) == []
    assert not (year_folder(data_dir) / ".parts").exists()
    verify = subprocess.run(
        [sys.executable, "-m", "backend.jobs.cli", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=slow_gateway.env,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def rerun_reusing_kept_parts(slow, data_dir: Path) -> None:
    """Run again: it must complete the year asking only for the chunks no part was kept of."""
    kept = {part.name for part in finished_parts(data_dir)}
    slow.reset()
    slow.sandbox.throttle_bytes_per_s = None  # only the first run needed to be caught at work
    rerun = cli_process(slow, data_dir, "--jobs", "4")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out + err
    assert len(kept) + slow.count("timeseries.get_range") == 12
    assert f"reused_chunks={len(kept)}" in out


def stop_after_a_part(slow, data_dir: Path, signum: int) -> tuple[subprocess.Popen[str], str]:
    """Start a run, signal it once a chunk is finished and others stream; (process, stderr)."""
    run = cli_process(slow, data_dir)
    wait_for(lambda: len(finished_parts(data_dir)) >= 1 and leftovers(data_dir))
    sent = time.monotonic()
    run.send_signal(signum)
    _, err = run.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    return run, err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "says"),
    [
        (signal.SIGINT, 130, "interrupted"),
        (signal.SIGTERM, 143, "stopped by SIGTERM"),
        (signal.SIGHUP, 129, "stopped by SIGHUP"),
    ],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_signal_ends_the_run_at_once_with_one_line_parts_kept_and_no_temp(
    slow_gateway, tmp_path, signum, code, says
):
    """Ctrl-C, docker stop and a closed terminal: prompt exit, one line, parts kept, no temps."""
    data_dir = tmp_path / "data"
    run, err = stop_after_a_part(slow_gateway, data_dir, signum)
    assert run.returncode == code, err
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()]
    assert says in err
    assert finished_parts(data_dir)
    assert leftovers(data_dir) == []


@pytest.mark.slow
def test_rerun_after_sigterm_fetches_only_the_missing_chunks(slow_gateway, tmp_path):
    """The parts a stopped run finished are not requested (nor billed) again."""
    data_dir = tmp_path / "data"
    stop_after_a_part(slow_gateway, data_dir, signal.SIGTERM)
    rerun_reusing_kept_parts(slow_gateway, data_dir)


@pytest.mark.slow
def test_two_concurrent_runs_download_once(slow_gateway, tmp_path):
    """Two runs on one symbol-year: one downloads, the other waits then skips; both exit 0."""
    data_dir = tmp_path / "data"
    first = cli_process(slow_gateway, data_dir, "--jobs", "4")
    wait_for((data_dir / "raw" / "databento" / ".locks" / "AAPL" / "2023" / "TRADES.lock").exists)
    second = cli_process(slow_gateway, data_dir)
    outputs = [process.communicate(timeout=120) for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    statuses = sorted(completions(out)[0]["status"] for out, _ in outputs)
    assert statuses == ["downloaded", "skipped"]
    assert slow_gateway.count("timeseries.get_range") == 12
    assert "waiting" in outputs[1][0]


def test_merge_fixes_a_header_predicted_wrongly_from_symbology(
    gateway, cli, data_dir, tmp_path, monkeypatch
):
    """The header is written first from the preflight's symbology; if the chunks' metadata
    disagrees, the chunks win and the file still equals a single full-year request."""
    from backend.jobs.core.dbn import HeaderFields
    from backend.jobs.plan import preflight

    def wrong_header(answer, symbol, span):
        return HeaderFields({symbol: []}, partial=[], not_found=[])

    monkeypatch.setattr(preflight, "predicted_header", wrong_header)
    result = cli("data", "--symbol", "MSFT", "--year", "2023", "--products", "trades")
    assert result.exit_code == 0, result.output
    single = plain_get_range(gateway, ["MSFT"], tmp_path / "single.dbn.zst")
    merged = year_folder(data_dir, "MSFT") / "TRADES.dbn.zst"
    assert decompressed(merged) == decompressed(single)
