"""The client layer: the call pool, retries (tenacity), the batch-file fetcher, the SDK's insides.

Real SDK against the sandbox gateway; the SDK guards fail when a databento release changes
what client/sdk.py relies on (then update that module, these tests and the pin together).
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import databento
import pytest
import requests
from loguru import logger

from backend.jobs.client.databento import DatabentoClient
from backend.jobs.client.files import FileFetcher
from backend.jobs.client.jobfiles import JobFile
from backend.jobs.client.retry import RetryPolicy, retrying
from backend.jobs.client.sdk import (
    STREAM_READ_SIZE,
    TIMEOUT_ATTRIBUTE,
    close_leaked_file,
    historical,
    timed_out,
)
from backend.jobs.client.translate import translate_error
from backend.jobs.core.concurrency import run_concurrently
from backend.jobs.core.dbn import scan
from backend.jobs.core.secret import Secret
from backend.jobs.errors import (
    CredentialsError,
    IngestError,
    InvalidInputError,
    JobGoneError,
    RunStoppedError,
    TransientError,
)
from backend.sandbox import Fault

GET_RANGE = "timeseries.get_range"
DOWNLOAD = "batch/download"
QUICK = RetryPolicy(base_delay_s=0.01, max_delay_s=0.02)


def gateway_url(gateway) -> str:
    return f"https://{gateway.gateway}"


def one_month_job(gateway, api_key: str) -> tuple[DatabentoClient, str, list[JobFile]]:
    """A done batch job of AAPL trades over March 2023, split by week (several files)."""
    sdk = databento.Historical(key=api_key, gateway=gateway.gateway)
    job = sdk.batch.submit_job(
        dataset="XNAS.ITCH",
        symbols="AAPL",
        schema="trades",
        start="2023-03-01",
        end="2023-04-01",
        split_duration="week",
    )
    client = DatabentoClient(Secret(api_key), gateway_url(gateway), policy=QUICK)
    return client, job["id"], client.job_files(job["id"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def open_files() -> set[str]:
    """What this process's file descriptors point at."""
    targets = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            targets.add(str(fd.readlink()))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
    return targets


# the call pool


def test_run_concurrently_starts_the_next_call_as_soon_as_one_ends():
    """A slow call holds up no other: the rest run past it on the other worker."""
    fast_done = threading.Event()
    finished: list[int] = []

    def slow() -> bool:
        return fast_done.wait(5)  # only ends early if the four fast calls ran meanwhile

    def fast(number: int) -> int:
        finished.append(number)
        if len(finished) == 4:
            fast_done.set()
        return number

    calls = [slow, *(lambda n=n: fast(n) for n in range(4))]
    began = time.monotonic()
    assert run_concurrently(calls, "pool", limit=2) == [True, 0, 1, 2, 3]
    assert time.monotonic() - began < 4


def test_run_concurrently_keeps_the_order_and_the_limit_on_daemon_threads():
    """Results come in call order whatever order they finish in; never more than `limit` run."""
    running, most, lock = 0, 0, threading.Lock()

    def call(number: int) -> tuple[int, bool]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05 * (5 - number))
        with lock:
            running -= 1
        return number, threading.current_thread().daemon

    calls = [lambda n=n: call(n) for n in range(5)]
    assert run_concurrently(calls, "order", limit=2) == [(n, True) for n in range(5)]
    assert most == 2
    assert run_concurrently([], "none") == []


def test_run_concurrently_raises_the_first_failure_and_starts_nothing_after_it():
    """After a failure no new call starts; the failure itself is raised, not a wrapper."""
    started: list[int] = []

    def call(number: int) -> int:
        started.append(number)
        if number == 1:
            raise ValueError("call 1 failed")
        return number

    with pytest.raises(ValueError, match="call 1 failed"):
        run_concurrently([lambda n=n: call(n) for n in range(4)], "fail", limit=1)
    assert started == [0, 1]


# retries, run by tenacity


class Flaky:
    """Fails `failures` times with `error`, then answers "ok"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


@pytest.fixture
def warnings_logged():
    """The messages loguru logs while the test runs."""
    messages: list[str] = []
    sink = logger.add(messages.append, format="{message}", level="WARNING")
    yield messages
    logger.remove(sink)


def test_retrying_retries_transient_errors_logging_one_line_each(warnings_logged):
    """Each retry says which one of how many, after how long and why (the CLI greps it)."""
    call = Flaky(2, TransientError("HTTP 503 busy"))
    assert retrying(call, policy=QUICK, stop=threading.Event(), label="chunk") == "ok"
    assert call.calls == 3
    assert [line.split(" in ")[0] for line in warnings_logged] == [
        "chunk: retry 1/5",
        "chunk: retry 2/5",
    ]
    assert all(line.endswith("s after: HTTP 503 busy\n") for line in warnings_logged)


@pytest.mark.parametrize("retries", [0, 2])
def test_retrying_gives_up_after_the_retries_saying_how_to_resume(retries):
    """--retries N means N+1 attempts, then one error that says to run the command again."""
    call = Flaky(99, TransientError("cut"))
    policy = RetryPolicy(retries=retries, base_delay_s=0.01)
    with pytest.raises(IngestError, match=f"failed after {retries + 1} attempts: cut; run the"):
        retrying(call, policy=policy, stop=threading.Event(), label="chunk")
    assert call.calls == retries + 1


def test_retrying_waits_at_least_the_retry_after():
    """The server's Retry-After wins over a shorter backoff."""
    call = Flaky(1, TransientError("429", retry_after=0.3))
    began = time.monotonic()
    assert retrying(call, policy=QUICK, stop=threading.Event(), label="x") == "ok"
    assert time.monotonic() - began >= 0.3


def test_retrying_refuses_a_retry_after_above_the_cap_at_once():
    """A server asking for a day is not slept through: one attempt, then when to come back."""
    call = Flaky(1, TransientError("HTTP 429", retry_after=86400))
    with pytest.raises(IngestError, match=r"retry in 86400s \(after .* UTC\), longer than the 60s"):
        retrying(call, policy=QUICK, stop=threading.Event(), label="x")
    assert call.calls == 1


def test_retrying_stop_ends_a_wait_at_once():
    """A run that ends does not sit out a backoff: the wait ends as the stop is set."""
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    call = Flaky(99, TransientError("busy"))
    began = time.monotonic()
    with pytest.raises(RunStoppedError, match="x: cancelled"):
        retrying(call, policy=RetryPolicy(base_delay_s=30), stop=stop, label="x")
    assert time.monotonic() - began < 5
    assert call.calls == 1


def test_retrying_makes_no_attempt_once_stopped_and_lets_other_errors_through():
    """A stopped run asks nothing; an error not listed (a bug of ours) is not retried."""
    stopped = threading.Event()
    stopped.set()
    call = Flaky(0, TransientError("never"))
    with pytest.raises(RunStoppedError):
        retrying(call, policy=QUICK, stop=stopped, label="x")
    assert call.calls == 0
    bug = Flaky(1, TypeError("unsupported operand"))
    with pytest.raises(TypeError):
        retrying(bug, policy=QUICK, stop=threading.Event(), label="x")
    assert bug.calls == 1


# the batch-file fetcher


def test_file_fetcher_fetches_every_file_over_one_session_and_connection(
    gateway, api_key, tmp_path
):
    """The session given to the client carries every file, on one kept-alive connection."""
    session = requests.Session()
    fetched: list[str] = []
    session.hooks["response"].append(lambda response, **_: fetched.append(response.url))
    _, job_id, files = one_month_job(gateway, api_key)
    client = DatabentoClient(Secret(api_key), gateway_url(gateway), session=session)
    assert len(files) > 2
    for file in files:
        client.download_file(file, tmp_path / file.filename, job_id)
        assert file.sha256 is None or sha256(tmp_path / file.filename) == file.sha256
    assert len(fetched) == len(files)
    pools = session.get_adapter(gateway_url(gateway)).poolmanager.pools
    # RecentlyUsedContainer cannot be iterated, only its keys
    assert [pools[key].num_connections for key in pools.keys()] == [1]  # noqa: SIM118
    session.close()


def test_file_fetcher_resumes_a_partial_file_with_range(gateway, api_key, tmp_path):
    """Bytes already on disk are not asked again; the result is the whole file."""
    client, job_id, files = one_month_job(gateway, api_key)
    file = next(file for file in files if file.is_data)
    whole = tmp_path / "whole"
    client.download_file(file, whole, job_id)
    partial = tmp_path / "partial"
    partial.write_bytes(whole.read_bytes()[:100])
    client.download_file(file, partial, job_id)
    assert partial.read_bytes() == whole.read_bytes()
    ranges = [r.params["range"] for r in gateway.requests if r.endpoint == DOWNLOAD]
    assert ranges == ["", f"bytes=100-{file.size - 1}"]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (503, TransientError),
        (429, TransientError),
        (410, JobGoneError),
        (401, CredentialsError),
        (400, IngestError),
    ],
)
def test_file_fetcher_error_statuses_become_our_errors(gateway, api_key, tmp_path, status, error):
    """Retryable, job gone, key refused, or refused: the class decides retry and exit code."""
    client, job_id, files = one_month_job(gateway, api_key)
    gateway.add_fault(Fault(endpoint=DOWNLOAD, status=status, retry_after=2))
    with pytest.raises(error) as raised:
        client.download_file(files[0], tmp_path / "f", job_id)
    assert not isinstance(raised.value, InvalidInputError)  # a file is never bad input
    if error is TransientError:
        assert raised.value.retry_after == 2
        assert raised.value.rate_limited is (status == 429)


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("https://{gateway}/v0/batch/download/u/JOB/f.dbn.zst", True),
        ("https://download.databento.com/v0/batch/download/u/JOB/f.dbn.zst", True),
        ("http://{gateway}/v0/batch/download/u/JOB/f.dbn.zst", False),
        ("https://evil.example.com/f.dbn.zst", False),
        ("https://databento.com.evil.example.com/f.dbn.zst", False),
        ("https://notdatabento.com/f.dbn.zst", False),
    ],
)
def test_file_fetcher_sends_the_key_only_over_https_to_databento(url, sent):
    """The gateway's host or *.databento.com, over https; any other URL is refused unasked."""
    fetcher = FileFetcher(
        Secret("db-" + "a" * 29), "127.0.0.1", timeout_s=1, stop=threading.Event()
    )
    file = JobFile("f.dbn.zst", 10, None, url.format(gateway="127.0.0.1:9"))
    if sent:
        assert fetcher.checked_url(file, "JOB") == file.url
    else:
        with pytest.raises(IngestError, match="not sending the API key there"):
            fetcher.checked_url(file, "JOB")


# the SDK's insides (client/sdk.py): these fail when databento changes them


def test_sdk_reads_its_request_timeout_from_the_api_object(gateway, api_key):
    """Every request reads TIMEOUT from its API object, so historical() bounds them all."""
    from databento.common.http import BentoHttpAPI

    assert BentoHttpAPI.TIMEOUT == 100
    for method in (BentoHttpAPI._get, BentoHttpAPI._post, BentoHttpAPI._stream):
        assert TIMEOUT_ATTRIBUTE in method.__code__.co_names, method
    sdk = historical(api_key, gateway_url(gateway), 0.5)
    apis = (sdk.metadata, sdk.symbology, sdk.timeseries, sdk.batch)
    assert all(isinstance(api, BentoHttpAPI) for api in apis)
    gateway.add_fault(Fault(endpoint="metadata.get_dataset_range", delay_s=30))
    began = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        sdk.metadata.get_dataset_range("XNAS.ITCH")
    assert time.monotonic() - began < 5


def test_sdk_copies_a_stream_in_reads_of_its_module_global_read_size(gateway, api_key, tmp_path):
    """`_stream` reads HTTP_STREAMING_READ_SIZE of databento.common.http when it runs, so
    historical() sets the size of every get_range read (and the file is the same)."""
    from databento.common import http

    assert "HTTP_STREAMING_READ_SIZE" in http.BentoHttpAPI._stream.__code__.co_names
    sdk = historical(api_key, gateway_url(gateway), 10)
    assert http.HTTP_STREAMING_READ_SIZE == STREAM_READ_SIZE
    path = tmp_path / "aapl.dbn.zst"
    store = sdk.timeseries.get_range(
        "XNAS.ITCH", "2023-03-01", "2023-03-03", symbols="AAPL", schema="trades", path=path
    )
    store.reader.close()
    assert scan(path, 48).records > 0  # whole: it decodes to its end


def test_sdk_leaves_its_file_open_on_a_broken_stream_and_we_close_it(gateway, api_key, tmp_path):
    """databento 0.88 keeps get_range's output open in the raised error's frames.

    If the first assert fails, the SDK now closes it itself: remove close_leaked_file.
    """
    sdk = historical(api_key, gateway_url(gateway), 5)
    gateway.add_fault(Fault(endpoint=GET_RANGE, cut_after_bytes=100))
    path = tmp_path / "cut.dbn.zst"
    with pytest.raises(databento.BentoError) as raised:
        sdk.timeseries.get_range(
            dataset="XNAS.ITCH",
            symbols="AAPL",
            schema="trades",
            start="2023-03-01",
            end="2023-04-01",
            path=path,
        )
    assert str(path) in open_files()
    close_leaked_file(raised.value, path)
    assert str(path) not in open_files()


def test_sdk_keeps_the_timeout_behind_a_stalled_stream(gateway, api_key, tmp_path):
    """The SDK wraps a stream that stalls midway `from None`; the timeout stays in its chain."""
    sdk = historical(api_key, gateway_url(gateway), 0.5)
    gateway.add_fault(Fault(endpoint=GET_RANGE, stall_after_bytes=100, stall_s=30))
    path = tmp_path / "stalled.dbn.zst"
    with pytest.raises(databento.BentoError) as raised:
        sdk.timeseries.get_range(
            dataset="XNAS.ITCH",
            symbols="AAPL",
            schema="trades",
            start="2023-03-01",
            end="2023-04-01",
            path=path,
        )
    close_leaked_file(raised.value, path)
    assert timed_out(raised.value)
    error = translate_error(raised.value, "March", 0.5)
    assert isinstance(error, TransientError)
    assert str(error) == "March: no answer for 0.5s (--timeout)"


def test_client_turns_a_refused_connection_into_our_error(api_key):
    """Nothing listening: the SDK's synchronous transport error leaves as a retryable error."""
    client = DatabentoClient(Secret(api_key), "https://127.0.0.1:1", policy=RetryPolicy(retries=0))
    with pytest.raises(IngestError, match="failed after 1 attempts"):
        client.dataset_range("XNAS.ITCH")
