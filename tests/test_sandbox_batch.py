"""The sandbox's batch API, driven through the real databento SDK over loopback TLS."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import databento
import numpy as np
import pytest
import requests
from databento.common.error import BentoWarning

from backend.sandbox import Fault, SandboxGateway

JOB_FIELDS = [
    "id",
    "user_id",
    "cost_usd",
    "dataset",
    "symbols",
    "stype_in",
    "stype_out",
    "schema",
    "start",
    "end",
    "limit",
    "encoding",
    "compression",
    "pretty_px",
    "pretty_ts",
    "map_symbols",
    "split_symbols",
    "split_duration",
    "split_size",
    "packaging",
    "delivery",
    "state",
    "ts_received",
    "ts_queued",
    "ts_process_start",
    "ts_process_done",
    "ts_expiration",
    "record_count",
    "billed_size",
    "actual_size",
    "package_size",
    "progress",
]
SUPPORT_FILES = ["metadata.json", "symbology.json", "condition.json"]
STAGES = ["received", "queued", "processing", "done"]


@pytest.fixture
def client(gateway: SandboxGateway, api_key: str) -> databento.Historical:
    return databento.Historical(key=api_key, gateway=gateway.gateway)


def submit(client: databento.Historical, **kwargs: Any) -> dict[str, Any]:
    """A trades job for AAPL, Monday 2023-03-06 and Tuesday 2023-03-07, split by day."""
    params: dict[str, Any] = {
        "dataset": "XNAS.ITCH",
        "symbols": "AAPL",
        "schema": "trades",
        "start": "2023-03-06",
        "end": "2023-03-08",
    }
    params.update(kwargs)
    return client.batch.submit_job(**params)


def iso(text: str) -> datetime:
    """A job timestamp (`...000000000Z`) as a datetime, to the microsecond."""
    return datetime.fromisoformat(text[:26] + "+00:00")


def ns(day: date) -> int:
    """UTC midnight of `day` in nanoseconds."""
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**9


def fetch(gateway: SandboxGateway, api_key: str, url: str, **headers: str) -> requests.Response:
    return requests.get(
        url, auth=(api_key, ""), headers=headers, verify=str(gateway.ca_path), timeout=10
    )


def fetch_files(
    gateway: SandboxGateway, api_key: str, files: list[dict[str, Any]]
) -> dict[str, bytes]:
    return {f["filename"]: fetch(gateway, api_key, f["urls"]["https"]).content for f in files}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def records(body: bytes) -> np.ndarray:
    return databento.DBNStore.from_bytes(body).to_ndarray()


def data_files(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in files if f["filename"] not in SUPPORT_FILES]


def error_case(excinfo: pytest.ExceptionInfo[databento.BentoHttpError]) -> str:
    return excinfo.value.json_body["detail"]["case"]


# submit_job


def test_submit_job_answers_received_job_billed_like_get_cost(client, gateway):
    """The answer is the job object in the documented field order, just received, with the
    cost, record count and billed size get_cost and friends report for the same query."""
    job = submit(client, symbols=["AAPL", "MSFT"])
    query = {"dataset": "XNAS.ITCH", "symbols": ["AAPL", "MSFT"], "schema": "trades"}
    window = {"start": "2023-03-06", "end": "2023-03-08"}
    assert list(job) == JOB_FIELDS
    assert re.fullmatch(rf"XNAS-{datetime.now(UTC):%Y%m%d}-[A-Z0-9]{{10}}", job["id"])
    assert job["user_id"] == "SANDBOX1"
    assert job["cost_usd"] == client.metadata.get_cost(**query, **window)
    assert job["record_count"] == client.metadata.get_record_count(**query, **window) == 80
    assert job["billed_size"] == client.metadata.get_billable_size(**query, **window) == 80 * 48
    assert job["symbols"] == "AAPL,MSFT"  # documented: one comma-joined string
    assert (job["start"], job["end"]) == (
        "2023-03-06T00:00:00.000000000Z",
        "2023-03-08T00:00:00.000000000Z",
    )
    assert job["state"] == "received"
    assert job["progress"] == 0
    for name in ("ts_queued", "ts_process_start", "ts_process_done", "ts_expiration"):
        assert job[name] is None
    assert abs(iso(job["ts_received"]) - datetime.now(UTC)) < timedelta(seconds=5)
    assert (job["encoding"], job["compression"], job["split_duration"]) == ("dbn", "zstd", "day")
    assert (job["limit"], job["packaging"], job["actual_size"], job["package_size"]) == (None,) * 4
    assert gateway.batch_jobs()[0]["id"] == job["id"]


@pytest.mark.parametrize(
    ("kwargs", "status", "case"),
    [
        ({"split_symbols": True}, 422, "sandbox_split_symbols_unsupported"),
        ({"limit": 10}, 422, "sandbox_batch_limit_unsupported"),
        ({"encoding": "csv"}, 400, "sandbox_encoding_unsupported"),
        ({"symbols": "ZZZZ"}, 422, "symbology_invalid_request"),
        ({"end": "2025-06-02"}, 422, "data_end_after_available_end"),
        ({"schema": "mbo"}, 422, "sandbox_schema_unsupported"),
    ],
)
def test_submit_job_rejects_what_the_sandbox_cannot_do(client, gateway, kwargs, status, case):
    """Unsupported options and get_range's range/symbol checks refuse the job; none is kept."""
    with pytest.raises(databento.BentoClientError) as excinfo:
        submit(client, **kwargs)
    assert excinfo.value.http_status == status
    assert error_case(excinfo) == case
    assert gateway.batch_jobs() == []


# states over time


def test_job_states_progress_over_processing_time(client, gateway):
    """With batch_processing_s the job goes received -> queued -> processing -> done, with a
    proportional progress and the stage timestamps filled as they pass."""
    gateway.batch_processing_s = 0.3
    job_id = submit(client)["id"]
    deadline = time.monotonic() + 10
    seen = []
    while not seen or seen[-1]["state"] != "done":
        seen.append(client.batch.get_job_details(job_id))
        assert time.monotonic() < deadline
    states = [details["state"] for details in seen]
    assert states == sorted(states, key=STAGES.index)
    processing = [details for details in seen if details["state"] == "processing"]
    assert processing
    assert all(0 <= details["progress"] < 100 for details in processing)
    assert all(
        details["ts_process_start"] and not details["ts_process_done"] for details in processing
    )
    done = seen[-1]
    assert done["progress"] == 100
    received, queued, started, finished = (
        iso(done[name])
        for name in ("ts_received", "ts_queued", "ts_process_start", "ts_process_done")
    )
    assert received < queued < started < finished
    assert finished - received == timedelta(seconds=0.3)
    assert iso(done["ts_expiration"]) - finished == timedelta(days=30)


def test_job_without_processing_time_is_done_at_first_look(client, gateway):
    """batch_processing_s=0: submit says received, the next look says done."""
    job = submit(client)
    assert job["state"] == "received"
    details = client.batch.get_job_details(job["id"])
    assert details["state"] == "done"
    assert details["progress"] == 100
    stamps = {
        details[name]
        for name in ("ts_received", "ts_queued", "ts_process_start", "ts_process_done")
    }
    assert stamps == {job["ts_received"]}
    assert client.batch.list_files(job["id"])


def test_list_files_is_empty_until_done(client, gateway, tmp_path):
    """A job still processing has no files yet, and no zip."""
    gateway.batch_processing_s = 60
    job_id = submit(client)["id"]
    assert client.batch.list_files(job_id) == []
    with pytest.raises(databento.BentoClientError) as excinfo:
        client.batch.download(job_id, tmp_path)
    assert (excinfo.value.http_status, error_case(excinfo)) == (404, "batch_job_not_done")


# list_jobs


def test_list_jobs_short_by_default_full_on_request(client, gateway):
    """The default answer is the short form, oldest first; short=False gives job objects."""
    first, second = submit(client), submit(client, symbols="MSFT")
    short = client.batch.list_jobs()
    assert short == [
        {"id": job["id"], "state": "done", "ts_received": job["ts_received"]}
        for job in (first, second)
    ]
    full = client.batch.list_jobs(short=False)
    assert [job["id"] for job in full] == [first["id"], second["id"]]
    assert full[1] == client.batch.get_job_details(second["id"])
    assert gateway.requests[-2].params["short"] == "False"


def test_list_jobs_filters_by_state_and_since(client, gateway):
    """`states` picks the documented filter values, `since` drops older jobs; without `states`
    every job but the expired ones is listed, one still `received` included."""
    done = submit(client)
    gateway.expire_job(submit(client)["id"])
    gateway.batch_processing_s = 600
    waiting = submit(client)
    assert [job["id"] for job in client.batch.list_jobs()] == [done["id"]]
    unfiltered = client.batch.list_jobs(states=None)
    assert [(job["id"], job["state"]) for job in unfiltered] == [
        (done["id"], "done"),
        (waiting["id"], "received"),
    ]
    expired = client.batch.list_jobs(states=["expired"])
    assert [job["state"] for job in expired] == ["expired"]
    every = client.batch.list_jobs(states="queued,processing,done,expired")
    assert len(every) == 2
    since = client.batch.list_jobs(states="done,expired", since=every[1]["ts_received"])
    assert [job["id"] for job in since] == [every[1]["id"]]
    for undocumented in ("finished", "received"):
        with pytest.raises(databento.BentoClientError) as excinfo:
            client.batch.list_jobs(states=undocumented)
        assert excinfo.value.http_status == 422


# files


def test_list_files_data_files_then_support_files_with_matching_hashes(client, gateway, api_key):
    """Data files in time order, then metadata/symbology/condition; sizes and sha256 hashes
    match the downloaded bytes; the URLs point at the gateway."""
    gateway.degraded_days = {date(2023, 3, 7)}
    job_id = submit(client)["id"]
    files = client.batch.list_files(job_id)
    names = [f["filename"] for f in files]
    assert names == [
        "xnas-itch-20230306.trades.dbn.zst",
        "xnas-itch-20230307.trades.dbn.zst",
        *SUPPORT_FILES,
    ]
    for f in files:
        location = f"SANDBOX1/{job_id}/{f['filename']}"
        assert f["urls"] == {
            "https": f"https://{gateway.gateway}/v0/batch/download/{location}",
            "ftp": f"ftp://ftp.databento.com/{location}",
        }
    bodies = fetch_files(gateway, api_key, files)
    for f in files:
        assert (f["size"], f["hash"]) == (len(bodies[f["filename"]]), sha256(bodies[f["filename"]]))
    metadata = json.loads(bodies["metadata.json"])
    assert metadata["job_id"] == job_id
    assert metadata["query"]["symbols"] == ["AAPL"]
    assert metadata["customizations"]["split_duration"] == "day"
    assert json.loads(bodies["symbology.json"]) == client.symbology.resolve(
        "XNAS.ITCH", ["AAPL"], "raw_symbol", "instrument_id", "2023-03-06", "2023-03-08"
    )
    assert json.loads(bodies["condition.json"]) == client.metadata.get_dataset_condition(
        "XNAS.ITCH", start_date="2023-03-06", end_date="2023-03-07"
    )
    details = client.batch.get_job_details(job_id)
    assert details["actual_size"] == sum(f["size"] for f in data_files(files))


def test_month_split_year_job_equals_one_get_range(client, gateway, api_key):
    """A year split by month: one file per month clipped to the job's range, each byte for byte
    the get_range of its period, their records together those of one get_range."""
    start, end = "2022-12-15", "2023-12-15"
    symbols = ["AAPL", "MSFT"]
    job_id = submit(client, symbols=symbols, start=start, end=end, split_duration="month")["id"]
    files = data_files(client.batch.list_files(job_id))
    names = [f["filename"] for f in files]
    assert names[0] == "xnas-itch-20221215-20221231.trades.dbn.zst"
    assert names[1] == "xnas-itch-20230101-20230131.trades.dbn.zst"
    assert names[-1] == "xnas-itch-20231201-20231214.trades.dbn.zst"
    assert len(names) == 13
    bodies = fetch_files(gateway, api_key, files)
    stores = [databento.DBNStore.from_bytes(bodies[name]) for name in names]
    periods = [(store.metadata.start, store.metadata.end) for store in stores]
    boundaries = (
        [date(2022, 12, 15)] + [date(2023, m, 1) for m in range(1, 13)] + [date(2023, 12, 15)]
    )
    assert periods == [(ns(a), ns(b)) for a, b in itertools.pairwise(boundaries)]
    july = client.timeseries.get_range(
        "XNAS.ITCH", symbols=symbols, schema="trades", start="2023-07-01", end="2023-08-01"
    )
    assert bodies["xnas-itch-20230701-20230731.trades.dbn.zst"] == july.raw
    whole = client.timeseries.get_range(
        "XNAS.ITCH", symbols=symbols, schema="trades", start=start, end=end
    )
    joined = np.concatenate([store.to_ndarray() for store in stores])
    assert len(joined) == 2 * 20 * 261  # weekdays from 2022-12-15 to 2023-12-14
    assert joined.tobytes() == whole.to_ndarray().tobytes()


@pytest.mark.parametrize(
    ("split_duration", "start", "end", "expected"),
    [
        (
            "week",
            "2023-03-01",
            "2023-03-15",
            ["20230301-20230304", "20230305-20230311", "20230312-20230314"],
        ),
        ("year", "2022-12-30", "2023-01-04", ["20221230-20221231", "20230101-20230103"]),
        ("none", "2023-03-01T14:00", "2023-03-15", ["20230301-20230314"]),
    ],
)
def test_split_durations_name_files_by_first_and_last_day(
    client, split_duration, start, end, expected
):
    """Weeks start on Sunday UTC; months and years are calendar ones; none is one file."""
    job_id = submit(client, start=start, end=end, split_duration=split_duration)["id"]
    names = [f["filename"] for f in data_files(client.batch.list_files(job_id))]
    assert names == [f"xnas-itch-{days}.trades.dbn.zst" for days in expected]


def test_day_split_weekend_and_unlisted_days_get_header_only_files(client, gateway, api_key):
    """Every day has a file: a weekend day holds no records, and a day before NEWCO's listing
    holds only a header naming it not found; uncompressed files end in .dbn."""
    job_id = submit(
        client, symbols="NEWCO", start="2023-06-09", end="2023-06-13", compression="none"
    )["id"]
    files = data_files(client.batch.list_files(job_id))
    names = [f["filename"] for f in files]
    assert names == [f"xnas-itch-202306{day:02d}.trades.dbn" for day in (9, 10, 11, 12)]
    bodies = fetch_files(gateway, api_key, files)
    stores = {name: databento.DBNStore.from_bytes(body) for name, body in bodies.items()}
    friday, saturday, monday = (
        stores[f"xnas-itch-202306{day}.trades.dbn"] for day in ("09", "10", "12")
    )
    assert friday.metadata.not_found == ["NEWCO"]
    assert friday.mappings == {}
    assert len(friday.to_ndarray()) == 0
    assert (saturday.metadata.start, saturday.metadata.end) == (
        ns(date(2023, 6, 10)),
        ns(date(2023, 6, 11)),
    )
    assert len(saturday.to_ndarray()) == 0
    assert len(monday.to_ndarray()) == 20


def test_job_files_ignore_gateway_changes_after_submission(client, gateway, api_key):
    """A job's files are made from the symbols and settings of its submission."""
    job_id = submit(client, start="2023-03-06", end="2023-03-07")["id"]
    gateway.records_per_day = 5
    gateway.add_symbol("AAPL", [(date(2023, 3, 6), date(2023, 3, 7), 999)])
    [data] = data_files(client.batch.list_files(job_id))
    body = records(fetch(gateway, api_key, data["urls"]["https"]).content)
    assert len(body) == 20
    assert set(body["instrument_id"]) == {38}


# downloads


def test_sdk_single_file_download_resumes_a_partial_file_with_range(
    client, gateway, api_key, tmp_path
):
    """A partial local file is completed with `Range: bytes=N-(size-1)`; the result matches the
    listed hash."""
    job_id = submit(client)["id"]
    target = data_files(client.batch.list_files(job_id))[0]
    name, size = target["filename"], target["size"]
    whole = fetch(gateway, api_key, target["urls"]["https"]).content
    (tmp_path / job_id).mkdir()
    (tmp_path / job_id / name).write_bytes(whole[:100])
    [path] = client.batch.download(job_id, tmp_path, filename_to_download=name)
    assert path.read_bytes() == whole
    assert sha256(path.read_bytes()) == target["hash"]
    request = [r for r in gateway.requests if r.endpoint == "batch/download"][-1]
    assert request.params == {
        "user_id": "SANDBOX1",
        "job_id": job_id,
        "filename": name,
        "range": f"bytes=100-{size - 1}",
    }


def test_file_download_honours_byte_ranges(client, gateway, api_key):
    """200 without Range; 206 with Content-Range for bytes=a- and bytes=a-b; 416 past the
    end; always a fixed Content-Length, never chunked."""
    job_id = submit(client)["id"]
    target = data_files(client.batch.list_files(job_id))[0]
    url, size = target["urls"]["https"], target["size"]
    whole = fetch(gateway, api_key, url)
    assert whole.status_code == 200
    assert whole.headers["Content-Length"] == str(size)
    assert "Transfer-Encoding" not in whole.headers
    body = whole.content
    tail = fetch(gateway, api_key, url, Range="bytes=10-")
    assert tail.status_code == 206
    assert tail.headers["Content-Range"] == f"bytes 10-{size - 1}/{size}"
    assert tail.content == body[10:]
    middle = fetch(gateway, api_key, url, Range="bytes=10-19")
    assert (middle.status_code, middle.headers["Content-Length"]) == (206, "10")
    assert middle.headers["Content-Range"] == f"bytes 10-19/{size}"
    assert middle.content == body[10:20]
    beyond = fetch(gateway, api_key, url, Range=f"bytes={size}-")
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{size}"
    assert gateway.count("batch/download") == 4
    unauthenticated = requests.get(url, verify=str(gateway.ca_path), timeout=10)
    assert unauthenticated.status_code == 401


def test_sdk_zip_download_extracts_every_file(client, gateway, tmp_path):
    """batch.download without a filename fetches the job's zip and extracts all its files."""
    job_id = submit(client, split_duration="week")["id"]
    files = client.batch.list_files(job_id)
    paths = client.batch.download(job_id, tmp_path)
    assert sorted(path.name for path in paths) == sorted(f["filename"] for f in files)
    for f in files:
        assert sha256((tmp_path / job_id / f["filename"]).read_bytes()) == f["hash"]
    assert gateway.count("batch.download") == 1


# expiry and forgetting


def test_expired_job_shows_expired_and_its_files_answer_404(client, gateway, api_key, tmp_path):
    """expire_job: the details say expired; list_files and downloads answer 404 expired."""
    job_id = submit(client)["id"]
    url = client.batch.list_files(job_id)[0]["urls"]["https"]
    gateway.expire_job(job_id)
    details = client.batch.get_job_details(job_id)
    assert details["state"] == "expired"
    assert details["ts_expiration"] is not None
    with pytest.raises(databento.BentoClientError) as excinfo:
        client.batch.list_files(job_id)
    assert (excinfo.value.http_status, error_case(excinfo)) == (404, "batch_job_expired")
    response = fetch(gateway, api_key, url)
    assert response.status_code == 404
    assert response.json()["detail"]["case"] == "batch_job_expired"
    with pytest.raises(databento.BentoClientError) as excinfo:
        client.batch.download(job_id, tmp_path)
    assert error_case(excinfo) == "batch_job_expired"


def test_job_expires_batch_expiry_s_after_done(client, gateway):
    """A job expires on its own once batch_expiry_s has passed since it was done."""
    gateway.batch_expiry_s = 0.2
    job_id = submit(client)["id"]
    details = client.batch.get_job_details(job_id)
    assert details["state"] == "done"
    assert iso(details["ts_expiration"]) - iso(details["ts_process_done"]) == timedelta(seconds=0.2)
    time.sleep(0.25)
    assert client.batch.get_job_details(job_id)["state"] == "expired"


def test_forgotten_or_unknown_job_answers_404_everywhere(client, gateway, api_key, tmp_path):
    """forget_job: every batch endpoint answers 404 batch_job_not_found, like an unknown id."""
    job_id = submit(client)["id"]
    url = client.batch.list_files(job_id)[0]["urls"]["https"]
    gateway.forget_job(job_id)
    assert gateway.batch_jobs() == []
    calls = [
        lambda: client.batch.get_job_details(job_id),
        lambda: client.batch.list_files(job_id),
        lambda: client.batch.download(job_id, tmp_path),
        lambda: client.batch.get_job_details("XNAS-20230101-AAAAAAAAAA"),
    ]
    for call in calls:
        with pytest.raises(databento.BentoClientError) as excinfo:
            call()
        assert excinfo.value.http_status == 404
        assert error_case(excinfo) == "batch_job_not_found"
    assert (
        excinfo.value.json_body["detail"]["message"]
        == "Batch job XNAS-20230101-AAAAAAAAAA was not found."
    )
    assert fetch(gateway, api_key, url).status_code == 404
    with pytest.raises(KeyError):
        gateway.forget_job(job_id)


def test_reset_forgets_jobs_and_restores_batch_settings(client, gateway):
    submit(client)
    gateway.batch_processing_s, gateway.batch_expiry_s = 5.0, 1.0
    gateway.reset()
    assert gateway.batch_jobs() == []
    assert (gateway.batch_processing_s, gateway.batch_expiry_s) == (0.0, 30 * 86400)


# faults


def test_fault_429_with_retry_after_on_submit_job(client, gateway):
    """A 429 on submit_job carries Retry-After; the next submission goes through."""
    gateway.add_fault(Fault(endpoint="batch.submit_job", status=429, retry_after=7))
    with pytest.raises(databento.BentoClientError) as excinfo:
        submit(client)
    assert excinfo.value.http_status == 429
    assert excinfo.value.headers["Retry-After"] == "7"
    assert gateway.batch_jobs() == []
    assert submit(client)["state"] == "received"


def test_fault_503_on_get_job_details(client, gateway):
    job_id = submit(client)["id"]
    gateway.add_fault(Fault(endpoint="batch.get_job_details", status=503))
    with pytest.raises(databento.BentoServerError) as excinfo:
        client.batch.get_job_details(job_id)
    assert excinfo.value.http_status == 503
    assert client.batch.get_job_details(job_id)["state"] == "done"


def test_fault_cut_file_download_is_short_and_the_sdk_resumes(client, gateway, api_key, tmp_path):
    """A cut download stops short of its Content-Length; the SDK retries with a Range from
    what it had written (nothing: urllib3 drops a short read's bytes) and ends with the right
    file."""
    job_id = submit(client)["id"]
    target = data_files(client.batch.list_files(job_id))[0]
    name, size = target["filename"], target["size"]
    gateway.add_fault(
        Fault(endpoint="batch/download", cut_after_bytes=300, match=lambda p: p["filename"] == name)
    )
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        fetch(gateway, api_key, target["urls"]["https"])
    gateway.add_fault(
        Fault(endpoint="batch/download", cut_after_bytes=300, match=lambda p: p["filename"] == name)
    )
    [path] = client.batch.download(job_id, tmp_path, filename_to_download=name)
    assert sha256(path.read_bytes()) == target["hash"]
    ranges = [r.params["range"] for r in gateway.requests if r.endpoint == "batch/download"]
    assert ranges == ["", "", f"bytes=0-{size - 1}"]


def test_fault_corrupt_at_byte_flips_one_byte_of_the_body_sent(client, gateway, api_key, tmp_path):
    """corrupt_at_byte flips one byte: the SDK warns about the checksum; in a ranged answer the
    offset counts from the start of that answer's body."""
    job_id = submit(client)["id"]
    target = data_files(client.batch.list_files(job_id))[0]
    name, url = target["filename"], target["urls"]["https"]
    clean = fetch(gateway, api_key, url).content
    gateway.add_fault(Fault(endpoint="batch/download", corrupt_at_byte=50))
    with pytest.warns(BentoWarning, match="checksum"):
        [path] = client.batch.download(job_id, tmp_path, filename_to_download=name)
    received = path.read_bytes()
    assert [i for i, (a, b) in enumerate(zip(received, clean, strict=True)) if a != b] == [50]
    assert received[50] == clean[50] ^ 0xFF
    gateway.add_fault(Fault(endpoint="batch/download", corrupt_at_byte=0))
    ranged = fetch(gateway, api_key, url, Range="bytes=100-").content
    assert ranged[0] == clean[100] ^ 0xFF
    assert ranged[1:] == clean[101:]


@pytest.mark.parametrize(
    "fault",
    [
        Fault(endpoint="batch/download", delay_s=0.3),
        Fault(endpoint="batch/download", stall_after_bytes=100, stall_s=0.3),
    ],
    ids=["delay_s", "stall_after_bytes"],
)
def test_fault_delay_and_stall_hold_a_file_download_back(client, gateway, api_key, fault):
    """delay_s and stall_after_bytes slow a file download down without breaking it."""
    job_id = submit(client)["id"]
    target = data_files(client.batch.list_files(job_id))[0]
    gateway.add_fault(fault)
    started = time.perf_counter()
    body = fetch(gateway, api_key, target["urls"]["https"]).content
    assert time.perf_counter() - started >= 0.3
    assert sha256(body) == target["hash"]


def test_file_download_is_throttled_like_get_range(client, gateway, api_key):
    """throttle_bytes_per_s paces file downloads too."""
    job_id = submit(client, start="2023-03-01", end="2023-04-01", split_duration="none")["id"]
    [target] = data_files(client.batch.list_files(job_id))
    gateway.throttle_bytes_per_s = target["size"] / 0.5
    started = time.perf_counter()
    body = fetch(gateway, api_key, target["urls"]["https"]).content
    assert time.perf_counter() - started >= 0.4
    assert sha256(body) == target["hash"]
    assert gateway.max_in_flight("batch/download") == 1


def test_fault_corrupt_at_byte_is_validated():
    assert Fault(corrupt_at_byte=0).corrupt_at_byte == 0
    with pytest.raises(ValueError, match="corrupt_at_byte must be >= 0"):
        Fault(corrupt_at_byte=-1)
