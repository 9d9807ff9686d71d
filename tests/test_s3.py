"""The cache in an S3 bucket (`--data-dir s3://bucket/prefix`), shared by many machines.

A real S3 protocol server (moto in server mode, on a loopback port) and the sandbox gateway,
through the real SDK and the real storage clients; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.sandbox.s3server import SECRET_KEY, LocalS3Server
from tests.helpers import completions, decompressed, plain_get_range

BUCKET = "bento-test"
PREFIX = "team/cache"
URL = f"s3://{BUCKET}/{PREFIX}"
TRADES_KEY = f"{PREFIX}/raw/databento/AAPL/2023/TRADES.dbn.zst"
MANIFEST_KEY = f"{PREFIX}/raw/databento/AAPL/2023/manifest.json"
GET_RANGE = "timeseries.get_range"


def run_s3(cli, work: Path, *extra: str, symbol: str = "AAPL"):
    return cli(
        *("data", "--symbol", symbol, "--year", "2023", "--products", "trades"),
        *("--data-dir", URL, "--work-dir", str(work), *extra),
    )


def object_bytes(s3: LocalS3Server, key: str) -> bytes:
    return s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()


def keys(s3: LocalS3Server) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=BUCKET)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def bucket_store():
    """The test bucket's store, opened as a run opens it."""
    from backend.jobs.core.locations import StoreLocation
    from backend.jobs.store import open_store

    return open_store(StoreLocation(URL, allow_http=True))


def lease_key() -> str:
    return f"{PREFIX}/raw/databento/.locks/AAPL/2023/TRADES.lock"


def test_objects_equal_a_single_full_year_request(gateway, s3, cli, tmp_path):
    """The bucket gets the local layout, byte for byte what a local run writes."""
    result = run_s3(cli, tmp_path / "work")
    assert result.exit_code == 0, result.output
    single = plain_get_range(gateway, ["AAPL"], tmp_path / "single.dbn.zst")
    (tmp_path / "got.dbn.zst").write_bytes(object_bytes(s3, TRADES_KEY))
    assert decompressed(tmp_path / "got.dbn.zst") == decompressed(single)
    assert keys(s3) == sorted([MANIFEST_KEY, TRADES_KEY, lease_key()])  # no probe or part left
    assert json.loads(object_bytes(s3, lease_key()))["released"] is True
    local = cli(
        *("data", "--symbol", "AAPL", "--year", "2023", "--products", "trades"),
        *("--data-dir", str(tmp_path / "local")),
    )
    assert local.exit_code == 0, local.output
    here = tmp_path / "local/raw/databento/AAPL/2023/TRADES.dbn.zst"
    assert here.read_bytes() == object_bytes(s3, TRADES_KEY)
    manifest = json.loads(object_bytes(s3, MANIFEST_KEY))
    assert manifest["products"]["TRADES"]["bytes"] == len(object_bytes(s3, TRADES_KEY))
    assert not list((tmp_path / "work").rglob("*.dbn.zst"))  # scratch emptied after upload
    assert SECRET_KEY not in result.output


def test_cached_rerun_reads_no_object_body_and_asks_databento_nothing(gateway, s3, cli, tmp_path):
    """Sizes from a listing, hashes from the manifest: the data objects are never read."""
    assert run_s3(cli, tmp_path / "work").exit_code == 0
    gateway.reset()
    s3.requests.clear()
    result = run_s3(cli, tmp_path / "other-work")
    assert result.exit_code == 0, result.output
    assert completions(result.stdout)[0]["status"] == "skipped"
    assert gateway.requests == []
    bodies = [request.key for request in s3.recorded() if request.reads_body]
    assert bodies == [MANIFEST_KEY]
    assert not [request for request in s3.recorded() if request.method in ("PUT", "DELETE")]


def test_status_and_verify_read_the_bucket(gateway, s3, cli, tmp_path):
    """verify streams the object through sha256; a flipped byte is caught, --verify repairs it."""
    assert run_s3(cli, tmp_path / "work").exit_code == 0
    status = cli("status", "--data-dir", URL, "--json")
    assert status.exit_code == 0, status.output
    (item,) = json.loads(status.stdout)
    assert item["path"] == f"s3://{BUCKET}/{TRADES_KEY}"
    assert item["manifest"] == "ok"
    assert cli("verify", "--data-dir", URL).exit_code == 0
    body = bytearray(object_bytes(s3, TRADES_KEY))
    body[len(body) // 2] ^= 0xFF
    s3.client().put_object(Bucket=BUCKET, Key=TRADES_KEY, Body=bytes(body))
    bad = cli("verify", "--data-dir", URL)
    assert bad.exit_code == 1
    assert "sha256 differs" in bad.output
    repaired = run_s3(cli, tmp_path / "work", "--verify")
    assert repaired.exit_code == 0, repaired.output
    assert completions(repaired.stdout)[0]["status"] == "downloaded"
    assert cli("verify", "--data-dir", URL).exit_code == 0


def test_missing_bucket_fails_before_any_databento_request(gateway, s3, cli, tmp_path):
    result = cli(
        *("data", "--symbol", "AAPL", "--year", "2023", "--data-dir", "s3://no-such-bucket/x"),
        *("--work-dir", str(tmp_path / "work")),
    )
    assert result.exit_code == 1
    assert "no-such-bucket" in result.output
    assert "Traceback" not in result.output
    assert gateway.requests == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--data-dir", "gs://bucket/x"), "neither a local folder nor s3://"),
        (("--data-dir", "s3://"), "is not an S3 location"),
        (("--work-dir", "scratch"), "--work-dir is for s3:// data dirs"),
    ],
)
def test_bad_locations_exit_2(gateway, s3, cli, tmp_path, args, message):
    result = cli("data", "--symbol", "AAPL", "--year", "2023", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert gateway.requests == []


def test_status_of_a_missing_bucket_exits_2(s3, cli):
    result = cli("status", "--data-dir", "s3://no-such-bucket/x")
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_server_honours_the_conditional_writes_the_cache_relies_on(s3):
    """If this fails, the local S3 server no longer tests leases and manifest merges."""
    from backend.jobs.store.base import ConflictError

    store = bucket_store()
    first = store.write("k", b"1", expected=None)
    with pytest.raises(ConflictError):
        store.write("k", b"2", expected=None)
    second = store.write("k", b"3", expected=first)
    with pytest.raises(ConflictError):
        store.write("k", b"4", expected=first)
    assert store.read("k") == (b"3", second)


def test_manifest_entries_of_concurrent_writers_are_all_kept(s3):
    """Eight writers record eight products at once: If-Match conflicts are merged, none lost."""
    from backend.jobs.cache.manifest import Manifest, ManifestEntry

    store = bucket_store()
    entry = {
        "file": "X.dbn.zst",
        "bytes": 1,
        "sha256": "0" * 64,
        "records": 0,
        "request": {
            "dataset": "XNAS.ITCH",
            "schema": "trades",
            "symbols": ["AAPL"],
            "stype_in": "raw_symbol",
            "stype_out": "instrument_id",
            "chunking": "month",
            "start": "2023-01-01T00:00:00Z",
            "end": "2024-01-01T00:00:00Z",
        },
    }
    key = "raw/databento/AAPL/2023/manifest.json"
    writers = [
        threading.Thread(
            target=Manifest(store, key, "XNAS.ITCH", "AAPL", 2023).record,
            args=(f"P{n}", ManifestEntry.parse(entry)),
        )
        for n in range(8)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    content = Manifest(store, key, "XNAS.ITCH", "AAPL", 2023).load()
    assert sorted(content.entries) == [f"P{n}" for n in range(8)]


def test_an_expired_lease_is_taken_over(gateway, s3, cli, tmp_path):
    """A machine that died holding a lease blocks others only until it expires."""
    expired = {"holder": "other-host:1:dead", "expires_at": "2020-01-01T00:00:00+00:00"}
    s3.client().put_object(Bucket=BUCKET, Key=lease_key(), Body=json.dumps(expired).encode())
    result = run_s3(cli, tmp_path / "work")
    assert result.exit_code == 0, result.output
    assert "took over the lease" in result.output
    assert json.loads(object_bytes(s3, lease_key()))["released"] is True


def test_a_live_lease_of_another_machine_is_waited_for_then_refused(gateway, s3, cli, tmp_path):
    until = datetime.now(UTC) + timedelta(minutes=5)
    live = {"holder": "other-host:1:busy", "expires_at": until.isoformat()}
    s3.client().put_object(Bucket=BUCKET, Key=lease_key(), Body=json.dumps(live).encode())
    result = run_s3(cli, tmp_path / "work", "--lock-timeout", "1")
    assert result.exit_code == 1
    assert "other-host:1:busy" in result.output
    assert gateway.count(GET_RANGE) == 0


def test_a_stale_multipart_upload_does_not_hold_up_the_next_run(gateway, s3, cli, tmp_path):
    """An upload a killed run left unfinished is invisible: the next run publishes the object
    whole (the leftover is the bucket lifecycle rule's to remove, docs/cache.md#s3)."""
    s3.client().create_multipart_upload(Bucket=BUCKET, Key=TRADES_KEY)
    result = run_s3(cli, tmp_path / "work")
    assert result.exit_code == 0, result.output
    manifest = json.loads(object_bytes(s3, MANIFEST_KEY))
    assert manifest["products"]["TRADES"]["bytes"] == len(object_bytes(s3, TRADES_KEY))


def test_an_upload_refused_midway_is_aborted_and_publishes_nothing(s3, tmp_path):
    """A part refused by the bucket ends the upload: aborted (no hidden parts left), no object,
    one line naming the data dir and the cause."""
    from backend.jobs.errors import IngestError
    from backend.jobs.store.s3 import PART_SIZE

    temp = tmp_path / "big.dbn.zst"
    temp.write_bytes(os.urandom(2 * PART_SIZE + 1000))
    s3.refuse = lambda request: request.method == "PUT" and "partNumber=2" in request.query
    with pytest.raises(IngestError, match=rf"^cannot upload big\.dbn\.zst in {URL} \(.+\): check"):
        bucket_store().publish(temp, "big.dbn.zst")
    assert s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert f"{PREFIX}/big.dbn.zst" not in keys(s3)
    assert [r.method for r in s3.recorded() if "uploadId=" in r.query][-1] == "DELETE"


@pytest.fixture
def s3_process_env(gateway, s3) -> dict[str, str]:
    """For CLI subprocesses; every get_range answer waits 0.3 s, so a run can be caught at work."""
    gateway.latency_s = 0.3
    return {**os.environ, **s3.env(), "PYTHONUNBUFFERED": "1"}


def command(work: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "backend.jobs.cli", "data", "--symbol", "AAPL", "--year", "2023"),
        *("--products", "trades", "--data-dir", URL, "--work-dir", str(work)),
        *("--chunk", "month"),  # 12 requests: a kill lands between them
    ]


def run_to_the_end(work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(work), env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_two_machines_on_one_prefix_download_once(gateway, s3, s3_process_env, tmp_path):
    """Separate scratch, one prefix: the second waits on the lease, then finds it cached."""
    first = subprocess.Popen(
        command(tmp_path / "a"), env=s3_process_env, stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    while gateway.count(GET_RANGE) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run_to_the_end(tmp_path / "b", s3_process_env)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0
    assert second.returncode == 0, second.stderr
    statuses = {completions(out)[0]["status"], completions(second.stdout)[0]["status"]}
    assert statuses == {"downloaded", "skipped"}
    assert gateway.count(GET_RANGE) == 12


def test_kill_9_leaves_no_partial_object_and_the_rerun_completes(
    gateway, s3, s3_process_env, tmp_path
):
    process = subprocess.Popen(
        command(tmp_path / "work"),
        env=s3_process_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while gateway.count(GET_RANGE) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert TRADES_KEY not in keys(s3)
    rerun = run_to_the_end(tmp_path / "work", s3_process_env)
    assert rerun.returncode == 0, rerun.stderr
    assert TRADES_KEY in keys(s3)
    assert s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_batch_job_recorded_in_the_bucket_is_finished_by_another_machine(
    gateway, s3, cli, tmp_path
):
    """The job record lives in the bucket: another machine picks the job up, unpaid."""
    gateway.batch_processing_s = 2.0
    first = run_s3(cli, tmp_path / "machine-a", "--engine", "batch", "--batch-timeout", "1s")
    assert first.exit_code == 1
    record = f"{PREFIX}/raw/databento/AAPL/2023/.parts/TRADES/batch-job.json"
    assert record in keys(s3)
    gateway.batch_processing_s = 0.0
    second = run_s3(cli, tmp_path / "machine-b", "--engine", "batch")
    assert second.exit_code == 0, second.output
    assert gateway.count("batch.submit_job") == 1
    assert record not in keys(s3)
    assert TRADES_KEY in keys(s3)
