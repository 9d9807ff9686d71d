"""Batch job objects as Databento documents them, and a lost submit answer billed once.

The documented job object carries `symbols` as one comma-joined string ("ZC.FUT,ES.FUT"); the
official C++ and Rust clients also accept an array. `list_files` may give `hash` and `urls` as
null. `list_jobs`' `states` filter takes only queued, processing, done and expired. The sandbox
serves the documented shapes by default, with knobs for what is not documented.

Real SDK against the sandbox gateway; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import databento
import pytest
import requests

from backend.jobs.cache.jobrecord import JobRecord
from backend.jobs.client.databento import DatabentoClient
from backend.jobs.client.jobfiles import JobFile
from backend.jobs.core.ranges import TimeRange
from backend.jobs.core.request import JobRequest, job_symbols
from backend.jobs.engines.batchjob import find_submitted
from backend.jobs.errors import IngestError
from backend.jobs.settings import Secret
from backend.sandbox import Fault, SandboxGateway
from backend.sandbox.batchapi import FILTER_STATES
from tests.helpers import YEAR_2023, year_folder

SUBMIT = "batch.submit_job"
LIST_JOBS = "batch.list_jobs"
SHAPES = ["string", "array"]
GROUP = ("--symbols", "MSFT,AAPL", "--year", "2023", "--products", "trades", "--engine", "batch")
SHA = "ab" * 32

# The documented job object (docs' batch.get_job_details example), for our request's fields.
DOCUMENTED_JOB = {
    "id": "XNAS-20240102-5KM3HL5BUW",
    "user_id": "NBPDLF33",
    "cost_usd": 1.5,
    "dataset": "XNAS.ITCH",
    "symbols": "AAPL,MSFT",
    "stype_in": "raw_symbol",
    "stype_out": "instrument_id",
    "schema": "trades",
    "start": "2023-01-01T00:00:00.000000000Z",
    "end": "2024-01-01T00:00:00.000000000Z",
    "limit": None,
    "encoding": "dbn",
    "compression": "zstd",
    "pretty_px": False,
    "pretty_ts": False,
    "map_symbols": False,
    "split_symbols": False,
    "split_duration": "month",
    "split_size": None,
    "packaging": None,
    "delivery": "download",
    "state": "queued",
}


def our_request(symbols: tuple[str, ...] = ("AAPL", "MSFT")) -> JobRequest:
    return JobRequest("XNAS.ITCH", symbols, "trades", TimeRange(*YEAR_2023), "month")


def jobs_in_book(gateway: SandboxGateway) -> list[dict[str, Any]]:
    return gateway.batch_jobs()


def listed_states(gateway: SandboxGateway) -> list[str | None]:
    return [r.params.get("states") for r in gateway.requests if r.endpoint == LIST_JOBS]


@pytest.fixture
def sdk(gateway: SandboxGateway, api_key: str) -> databento.Historical:
    return databento.Historical(api_key, gateway=f"https://{gateway.gateway}")


@pytest.fixture
def client(gateway: SandboxGateway, api_key: str) -> DatabentoClient:
    return DatabentoClient(Secret(api_key), f"https://{gateway.gateway}")


# Job objects: symbols as a string or an array, compared as a set


@pytest.mark.parametrize(
    ("symbols", "ours"),
    [
        ("AAPL,MSFT", True),
        ("MSFT,AAPL", True),
        (" msft , AAPL ", True),
        ("AAPL,MSFT,AAPL", True),
        (["MSFT", "AAPL"], True),
        (["AAPL", "MSFT", "GOOG"], False),
        ("AAPL", False),
        ("AAPL,MSFT,GOOG", False),
        (None, False),
        (42, False),
    ],
)
def test_job_request_symbols_string_or_array_compared_as_a_set(symbols, ours):
    """The documented comma-joined string and the array both name our job, in any order."""
    assert our_request().answered_by({**DOCUMENTED_JOB, "symbols": symbols}) is ours


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ZC.FUT,ES.FUT", {"ZC.FUT", "ES.FUT"}),
        ("AAPL", {"AAPL"}),
        (["AAPL"], {"AAPL"}),
        ("", set()),
        ({"AAPL": 1}, None),
        ([1, 2], None),
    ],
)
def test_job_symbols_parse_the_documented_string_and_the_array(raw, expected):
    """`symbols` as the docs show it (one string) and as other clients accept it (a list)."""
    assert job_symbols(raw) == (None if expected is None else frozenset(expected))


# JobFile: nullable hash and urls


HTTPS = "https://api.databento.com/v0/batch/download/U/J/f.dbn.zst"


@pytest.mark.parametrize(
    ("changes", "sha256", "url"),
    [
        ({}, SHA, HTTPS),
        ({"hash": None}, None, HTTPS),
        ({"hash": "SHA256:" + SHA.upper()}, SHA, HTTPS),
        ({"hash": "md5:0123"}, None, HTTPS),  # another algorithm: skipped, like the SDK does
        ({"urls": None}, SHA, None),
        ({"urls": {"https": None, "ftp": "ftp://ftp.databento.com/U/J/f.dbn.zst"}}, SHA, None),
        ({"urls": {"ftp": "ftp://ftp.databento.com/U/J/f.dbn.zst"}}, SHA, None),
    ],
)
def test_job_file_parse_accepts_null_hash_and_urls(changes, sha256, url):
    """Only filename and size are required by the published schema."""
    raw = {"filename": "f.dbn.zst", "size": 10, "hash": f"sha256:{SHA}", "urls": {"https": HTTPS}}
    raw.update(changes)
    assert JobFile.parse(raw) == JobFile("f.dbn.zst", 10, sha256, url)


@pytest.mark.parametrize("missing", ["hash", "urls"])
def test_job_file_parse_accepts_absent_hash_and_urls(missing):
    """Absent is as good as null for the optional fields."""
    raw = {"filename": "f.dbn.zst", "size": 10, "hash": f"sha256:{SHA}", "urls": {"https": HTTPS}}
    del raw[missing]
    parsed = JobFile.parse(raw)
    assert (parsed.sha256, parsed.url) == ((None, HTTPS) if missing == "hash" else (SHA, None))


@pytest.mark.parametrize(
    "changes",
    [
        {"hash": "sha256:abc"},
        {"hash": "sha256:" + "zz" * 32},
        {"filename": "../f.dbn.zst"},
        {"size": None},
        {"urls": "https://x"},
    ],
)
def test_job_file_parse_refuses_malformed_entries(changes):
    """A wrong digest, an unsafe name, no size or odd urls are an unexpected answer."""
    raw = {"filename": "f.dbn.zst", "size": 10, "hash": f"sha256:{SHA}", "urls": {"https": HTTPS}}
    with pytest.raises((ValueError, TypeError)):
        JobFile.parse({**raw, **changes})


def test_job_file_without_https_url_fails_naming_the_file(tmp_path):
    """Databento offers no download of it: one clear error, no request, no file."""
    client = DatabentoClient(Secret("db-" + "a" * 29), "https://127.0.0.1:9")
    with pytest.raises(IngestError, match=r"JOB lists f\.dbn\.zst without an https URL"):
        client.download_file(JobFile("f.dbn.zst", 10, SHA, None), tmp_path / "f.partial", "JOB")
    assert not (tmp_path / "f.partial").exists()


# The sandbox: documented shapes by default, a knob for each unknown


@pytest.mark.parametrize("shape", [None, *SHAPES])
def test_sandbox_job_objects_show_symbols_as_the_knob_says(gateway, sdk, shape):
    """Submit, details and the long list all show one shape; the default is the documented one."""
    if shape is not None:
        gateway.batch_symbols = shape
    expected = ["MSFT", "AAPL"] if shape == "array" else "MSFT,AAPL"
    answer = sdk.batch.submit_job(**our_request(("MSFT", "AAPL")).submit_params())
    details = sdk.batch.get_job_details(answer["id"])
    (listed,) = sdk.batch.list_jobs(short=False)
    assert [answer["symbols"], details["symbols"], listed["symbols"]] == [expected] * 3
    gateway.reset()
    assert (gateway.batch_symbols, gateway.batch_submit_answer) == ("string", "sent")


@pytest.mark.parametrize(
    ("states", "refused"),
    [
        (None, None),
        ("queued,processing,done,expired", None),
        ("done", None),
        ("received", "received"),
        ("queued,received,done", "received"),
        ("finished", "finished"),
    ],
)
def test_sandbox_list_jobs_validates_the_states_filter(gateway, sdk, states, refused):
    """Only the documented filter values are taken, with FastAPI's 422 body for any other."""
    if refused is None:
        assert sdk.batch.list_jobs(states=states) == []
        return
    with pytest.raises(databento.BentoClientError) as excinfo:
        sdk.batch.list_jobs(states=states)
    assert excinfo.value.http_status == 422
    (item,) = excinfo.value.json_body["detail"]
    assert (item["type"], item["loc"], item["input"]) == ("enum", ["query", "states"], refused)


@pytest.mark.parametrize(
    ("answer", "error"),
    [("502", databento.BentoServerError), ("cut", requests.exceptions.ChunkedEncodingError)],
)
def test_sandbox_lost_submit_answer_still_creates_the_job(gateway, sdk, answer, error):
    """The job exists, billed, though its submit's answer never arrives."""
    gateway.batch_submit_answer = answer
    with pytest.raises(error) as excinfo:
        sdk.batch.submit_job(**our_request().submit_params())
    if answer == "502":
        assert excinfo.value.http_status == 502
        assert "<title>502 Bad Gateway</title>" in excinfo.value.http_body
    (job,) = jobs_in_book(gateway)
    assert job["symbols"] == "AAPL,MSFT"


# Lost-submit recovery: one job, whatever the shape and the state


@pytest.mark.parametrize("shape", SHAPES)
def test_lookup_finds_a_job_still_received(gateway, client, shape):
    """A job looked up just after its submit may still show `received`: it is found, and no
    undocumented filter value is sent for it."""
    gateway.batch_symbols = shape
    gateway.batch_processing_s = 600  # received for a minute
    job = our_request(("MSFT", "AAPL"))
    record = JobRecord.submitting(job)
    answer = client.submit_job(job, "AAPL 2023 trades")
    found = find_submitted(client, record)
    assert found is not None
    assert (found["id"], found["state"]) == (answer["id"], "received")
    assert set(listed_states(gateway)) <= {None, *FILTER_STATES}


def test_lookup_ignores_jobs_of_other_requests(gateway, client):
    """Another job since the submit (other symbols) is not taken for ours."""
    client.submit_job(our_request(("AAPL",)), "AAPL 2023 trades")
    assert find_submitted(client, JobRecord.submitting(our_request())) is None


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lost", ["cut", "502"])
def test_lost_submit_answer_bills_one_job(gateway, cli, data_dir, lost, shape):
    """The submit created the job but its answer was lost: the retry finds it, never pays twice."""
    gateway.batch_symbols = shape
    gateway.batch_submit_answer = lost
    result = cli("data", *GROUP)
    assert result.exit_code == 0, result.output
    assert gateway.count(SUBMIT) == 1
    assert len(jobs_in_book(gateway)) == 1
    assert "answer was lost; not submitting again" in result.output
    assert set(listed_states(gateway)) <= {None, *FILTER_STATES}
    for symbol in ("AAPL", "MSFT"):
        assert (year_folder(data_dir, symbol) / "TRADES.dbn.zst").exists()


@pytest.mark.parametrize("shape", SHAPES)
def test_kill_9_between_submit_and_record_bills_one_job(gateway, cli, data_dir, shape):
    """Killed while the submit's answer is on its way: the next run finds the job, pays nothing."""
    gateway.batch_symbols = shape
    gateway.add_fault(Fault(endpoint=SUBMIT, stall_after_bytes=0, stall_s=60))
    command = [sys.executable, "-m", "backend.jobs.cli", "data", *GROUP]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    state = year_folder(data_dir) / ".parts" / "TRADES" / "batch-job.json"
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not jobs_in_book(gateway) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert len(jobs_in_book(gateway)) == 1
    assert json.loads(state.read_text())["job_id"] is None  # submitting: the answer never came
    rerun = cli("data", *GROUP)
    assert rerun.exit_code == 0, rerun.output
    assert gateway.count(SUBMIT) == 1
    assert len(jobs_in_book(gateway)) == 1
    assert "submitted by the last run" in rerun.output
    assert (year_folder(data_dir) / "TRADES.dbn.zst").exists()


def test_proxy_502_is_reported_by_its_page_title():
    """A proxy's HTML 502 names itself, not "no reason given"."""
    from backend.jobs.client.databento import server_reason
    from backend.sandbox.batchapi import PROXY_502_BODY

    error = databento.BentoServerError(http_status=502, http_body=PROXY_502_BODY)
    assert server_reason(error) == "Bad Gateway"


def test_documented_list_files_example_parses():
    """The docs' list_files example, with the null hash the schema allows."""
    answer = [
        {
            "filename": "metadata.json",
            "size": 1102,
            "hash": f"sha256:{SHA}",
            "urls": {"https": HTTPS.replace("f.dbn.zst", "metadata.json"), "ftp": "ftp://x/m"},
        },
        {"filename": "glbx-mdp3-20220610.mbo.dbn.zst", "size": 21832, "hash": None, "urls": {}},
    ]
    files = [JobFile.parse(item) for item in answer]
    assert [(f.is_data, f.sha256 is None, f.url is None) for f in files] == [
        (False, False, False),
        (True, True, True),
    ]
