"""Small pure pieces: settings, cache decisions, retry delays, mapping coalescing, DBN checks."""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path

import pytest
import zstandard

from backend.jobs.cache.decision import Action, CacheKey, CacheState, OnDisk, decide
from backend.jobs.cache.manifest import ManifestEntry, RecordedRequest, parse_manifest
from backend.jobs.client.retry import RetryPolicy
from backend.jobs.core.dbn import coalesce, read_metadata, scan
from backend.jobs.errors import CorruptFileError, InvalidInputError
from backend.jobs.logs import secret_pattern
from backend.jobs.settings import Secret, Settings, normalize_gateway
from tests.helpers import FIXTURES


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:8443", "https://127.0.0.1:8443"),
        ("localhost:8443", "https://localhost:8443"),
        ("https://hist.example.com/", "https://hist.example.com"),
        ("http://127.0.0.1:9/prefix", "https://127.0.0.1:9/prefix"),
        (None, None),
    ],
)
def test_normalize_gateway_gives_the_sdk_a_full_https_url(raw, expected):
    """The SDK mangles `localhost:PORT` and doubles a trailing slash; we hand it clean URLs."""
    assert normalize_gateway(raw) == expected


@pytest.mark.parametrize("raw", ["https://db-key@host:1", "host:notaport", "https://", "h:1/?a=b"])
def test_normalize_gateway_rejects_credentials_and_garbage(raw):
    """Keys belong in DATABENTO_API_KEY, never in a URL that may be logged."""
    with pytest.raises(InvalidInputError, match="gateway"):
        normalize_gateway(raw)


def test_settings_from_env_reads_key_gateway_and_data_dir(tmp_path):
    """The environment is read in one place; flags override it."""
    env = {"DATABENTO_API_KEY": "db-secret", "DATABENTO_GATEWAY": "127.0.0.1:1", "DATA_DIR": "/x"}
    settings = Settings.from_env(env, data_dir=tmp_path)
    assert settings.api_key is not None
    assert settings.api_key.reveal() == "db-secret"
    assert settings.gateway_url() == "https://127.0.0.1:1"
    assert settings.data_dir == tmp_path


@pytest.mark.parametrize("flag", ["", "  ", None])
def test_settings_empty_data_dir_flag_means_the_environment_or_default(flag, tmp_path):
    """`--data-dir ''` and `DATA_DIR=''` agree: both mean "not set"."""
    assert Settings.from_env({"DATA_DIR": str(tmp_path)}, data_dir=flag).data_dir == tmp_path
    assert Settings.from_env({"DATA_DIR": ""}, data_dir=flag).data_dir.name == "data"


def test_settings_are_checked_only_when_used():
    """A bad gateway or budget does not fail commands (or cached runs) that never use them."""
    settings = Settings.from_env({"DATABENTO_GATEWAY": "::bad", "DATABENTO_MAX_COST": "x"})
    with pytest.raises(InvalidInputError, match="gateway"):
        settings.gateway_url()
    with pytest.raises(InvalidInputError, match="DATABENTO_MAX_COST"):
        settings.budget()


@pytest.mark.parametrize(
    "gateway",
    ["db-" + "A" * 29, "DB-" + "abc123XYZ" * 3 + "ab", "https://db-" + "x" * 29 + ":443"],
)
def test_gateway_that_looks_like_an_api_key_is_refused_without_echoing_it(gateway):
    """An easy slip (`--gateway "$DATABENTO_API_KEY"`) must not leave the machine or the log."""
    with pytest.raises(InvalidInputError, match="looks like an API key") as caught:
        normalize_gateway(gateway)
    assert gateway[3:20].lower() not in str(caught.value).lower()


def test_gateway_containing_the_configured_key_in_another_case_is_refused():
    """The configured key, even upper-cased, is never taken for a host name."""
    with pytest.raises(InvalidInputError, match="looks like an API key"):
        normalize_gateway("host-DB-SECRETKEY:1", key="db-secretkey")


def test_secret_pattern_masks_any_case_and_the_basic_auth_header():
    """The key can reach a message lower-cased (a URL host) or as base64 (an HTTP header)."""
    import base64

    key = "db-AbCdEfGhIjKlMnOpQrStUvWxYz123"
    pattern = secret_pattern([key])
    basic = base64.b64encode(f"{key}:".encode()).decode()
    text = f"host {key.lower()} / {key.upper()} / Authorization: Basic {basic}"
    masked = pattern.sub("***", text)
    assert key.lower() not in masked.lower()
    assert basic.rstrip("=") not in masked


def test_secret_never_shows_its_value():
    """repr/str of settings end up in tracebacks and logs."""
    secret = Secret("db-verysecret")
    assert "verysecret" not in repr(secret)
    assert "verysecret" not in str(Settings(secret, Path()))


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", "-inf"])
def test_settings_rejects_a_bad_max_cost(value):
    """A budget that is not a finite non-negative number is an input error, not 'no budget'."""
    with pytest.raises(InvalidInputError, match="DATABENTO_MAX_COST"):
        Settings.from_env({"DATABENTO_MAX_COST": value}).budget()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5])
def test_settings_rejects_a_bad_max_cost_flag(value):
    """`--max-cost nan` must not switch the budget off."""
    with pytest.raises(InvalidInputError, match="--max-cost"):
        Settings.from_env({}, max_cost=value).budget()


def entry(dataset="XNAS.ITCH", schema="trades", symbol="AAPL", size=10, start="2023-01-01"):
    request = RecordedRequest(
        dataset, schema, (symbol,), "raw_symbol", "instrument_id", start, "2024-01-01", "month"
    )
    return ManifestEntry("TRADES.dbn.zst", size, "0" * 64, 1, None, None, request)


KEY = CacheKey("XNAS.ITCH", "trades", "AAPL", 2023)


@pytest.mark.parametrize(
    ("on_disk", "action", "state"),
    [
        (OnDisk(None, False, None, None), Action.FETCH, CacheState.MISSING),
        (OnDisk(0, False, entry(size=0), None), Action.FETCH, CacheState.MISSING),
        (OnDisk(None, True, entry(), None), Action.FETCH, CacheState.NOT_A_FILE),
        (OnDisk(10, False, None, None), Action.ADOPT, CacheState.UNRECORDED),
        (OnDisk(10, False, None, "damaged manifest entry (x)"), Action.ADOPT, CacheState.DAMAGED),
        (OnDisk(10, False, entry(size=11), None), Action.FETCH, CacheState.SIZE_MISMATCH),
        (OnDisk(10, False, entry(), None), Action.SKIP, CacheState.OK),
        (OnDisk(10, False, entry("XNYS.PILLAR"), None), Action.FETCH, CacheState.OTHER_REQUEST),
        (OnDisk(10, False, entry(schema="tbbo"), None), Action.FETCH, CacheState.OTHER_REQUEST),
        (OnDisk(10, False, entry(symbol="MSFT"), None), Action.FETCH, CacheState.OTHER_REQUEST),
        (
            OnDisk(10, False, entry(start="2022-06-01"), None),
            Action.FETCH,
            CacheState.OTHER_REQUEST,
        ),
    ],
)
def test_decide_is_a_pure_function_of_disk_and_request(on_disk, action, state):
    """Skip only when the recorded request answers the asked one and the size matches."""
    decision = decide(on_disk, KEY, force=False, verify=False)
    assert (decision.action, decision.state) == (action, state)


def test_decide_force_fetches_and_verify_rehashes_a_cached_file():
    """--force always fetches; --verify turns a skip into a re-hash."""
    cached = OnDisk(10, False, entry(), None)
    assert decide(cached, KEY, force=True, verify=False).action is Action.FETCH
    assert decide(cached, KEY, force=False, verify=True).action is Action.VERIFY


@pytest.mark.parametrize(
    ("products", "reason"),
    [
        ({"TRADES": "oops"}, "not an object"),
        ({"TRADES": []}, "not an object"),
        ({"TRADES": {"records": "many"}}, "request"),
        ({"TRADES": {**entry().as_json(), "records": "many"}}, "records"),
        ({"TRADES": {**entry().as_json(), "bytes": True}}, "bytes"),
        ({"TRADES": {**entry().as_json(), "sha256": "zz"}}, "sha256"),
    ],
)
def test_parse_manifest_reports_damaged_entries_and_keeps_good_ones(products, reason):
    """A wrong-typed entry is reported as damaged; the others stay usable."""
    import json

    good = entry().as_json()
    text = json.dumps({"format": 1, "products": {**products, "TBBO": good}})
    content = parse_manifest(text)
    assert reason in content.damaged["TRADES"]
    assert content.entries["TBBO"] == ManifestEntry.parse(good)


@pytest.mark.parametrize(
    "text", ["{", "[]", '{"products": []}', '{"format": 2, "products": {}}', '"x"']
)
def test_parse_manifest_whole_file_damage_is_a_problem_not_an_exception(text):
    """Unreadable JSON, another shape or an unknown format version: every product is damaged."""
    content = parse_manifest(text)
    assert content.problem
    assert content.damage("TRADES") == content.problem


def test_retry_delay_grows_is_capped_and_honours_retry_after():
    """Backoff doubles with jitter, never exceeds the cap, and waits at least Retry-After."""
    policy = RetryPolicy(retries=10, base_delay_s=1.0, max_delay_s=8.0)
    rng = random.Random(1)
    delays = [policy.delay(attempt, None, rng) for attempt in range(6)]
    assert all(0.5 * min(8, 2**i) <= d <= min(8, 2**i) for i, d in enumerate(delays))
    assert policy.delay(0, 5.0, rng) >= 5.0


def test_coalesce_joins_adjacent_equal_intervals_only():
    """Monthly chunks of one instrument become one interval; an id change stays two."""
    jan, feb, mar, apr = (date(2023, m, 1) for m in (1, 2, 3, 4))
    assert coalesce([(feb, mar, "38"), (jan, feb, "38")]) == [(jan, mar, "38")]
    assert coalesce([(jan, feb, "1"), (feb, mar, "2"), (mar, apr, "2")]) == [
        (jan, feb, "1"),
        (feb, apr, "2"),
    ]


@pytest.mark.parametrize(("name", "size"), [("trades", 48), ("tbbo", 80)])
def test_scan_reads_real_databento_files(name, size):
    """The real samples decode: metadata, 4 records, ascending ts_recv."""
    summary = scan(FIXTURES / f"test_data.{name}.dbn.zst", size)
    assert summary.records == 4
    assert summary.metadata.symbols == ["NVDA"]
    assert summary.first_ts_recv <= summary.last_ts_recv
    assert read_metadata(FIXTURES / f"test_data.{name}.dbn.zst").schema == name


def test_scan_reads_across_concatenated_zstd_frames(tmp_path):
    """Several frames are valid zstd: every reader here must read across them."""
    raw = zstandard.ZstdDecompressor().decompress(
        (FIXTURES / "test_data.trades.dbn.zst").read_bytes(), max_output_size=1 << 20
    )
    cut = len(raw) - 2 * 48
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    path = tmp_path / "frames.dbn.zst"
    path.write_bytes(compressor.compress(raw[:cut]) + compressor.compress(raw[cut:]))
    assert scan(path, 48).records == 4


@pytest.mark.parametrize("cut", [1, 5, 100])
def test_scan_detects_a_truncated_stream(tmp_path, cut):
    """zstandard's reader accepts a cut frame silently; ours refuses it."""
    data = (FIXTURES / "test_data.tbbo.dbn.zst").read_bytes()
    path = tmp_path / "cut.dbn.zst"
    path.write_bytes(data[:-cut])
    with pytest.raises(CorruptFileError):
        scan(path, 80)


def test_scan_detects_a_wrong_record_size(tmp_path):
    """A trades file read as tbbo (or a torn record) is corrupt, not silently miscounted."""
    with pytest.raises(CorruptFileError):
        scan(FIXTURES / "test_data.trades.dbn.zst", 80)


def test_client_translates_sdk_errors_and_lets_our_bugs_surface(api_key):
    """A transport failure becomes a retryable error; a TypeError of ours stays a TypeError."""
    import requests

    from backend.jobs.client.databento import DatabentoClient
    from backend.jobs.errors import IngestError

    client = DatabentoClient(Secret(api_key), "https://127.0.0.1:1", policy=RetryPolicy(retries=0))

    def transport_failure() -> None:
        raise requests.ConnectionError("connection refused")

    def our_bug() -> None:
        raise TypeError("unsupported operand")

    with pytest.raises(IngestError, match="connection refused"):
        client._call(transport_failure, "what")
    with pytest.raises(TypeError):
        client._call(our_bug, "what")


def test_retry_policy_refuses_a_retry_after_above_its_cap():
    """Retry-After up to the cap is honoured; above it, the wait is refused."""
    policy = RetryPolicy()
    assert not policy.refuses_wait(None)
    assert not policy.refuses_wait(60)
    assert policy.refuses_wait(86400)


def test_pacer_share_paces_a_cluster_worker_at_its_part_of_the_rates_and_submits():
    """One of two workers: half the rate of each family, half the submits per window."""
    import threading
    import time

    from backend.jobs.client.retry import SUBMITS_PER_WINDOW, Pacer
    from backend.jobs.errors import RunStoppedError

    pacer = Pacer({"timeseries": 40.0}, share=0.5)
    stop = threading.Event()
    began = time.monotonic()
    for _ in range(3):
        pacer.wait("timeseries", stop)
    assert time.monotonic() - began >= 0.09  # 2 intervals of 50 ms, not 25
    for _ in range(SUBMITS_PER_WINDOW // 2):
        pacer.wait("submit", stop)  # within the share: no wait
    stop.set()
    with pytest.raises(RunStoppedError):
        pacer.wait("submit", stop)  # the next would wait for the window


def test_pacer_spaces_requests_and_holds_them_all_after_a_429():
    """Starts are spaced by the rate; a hold delays every family's next start."""
    import threading
    import time

    from backend.jobs.client.retry import Pacer

    pacer = Pacer({"timeseries": 20.0, "metadata": 1000.0})
    stop = threading.Event()
    began = time.monotonic()
    for _ in range(5):
        pacer.wait("timeseries", stop)
    assert time.monotonic() - began >= 0.19  # 4 intervals of 50 ms
    pacer.hold(0.2)
    held = time.monotonic()
    pacer.wait("metadata", stop)
    assert time.monotonic() - held >= 0.19


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5GB", 5 * 10**9), ("800MB", 8 * 10**8), ("1.5 GiB", 3 * 2**29), ("123", 123), ("2kb", 2000)],
)
def test_parse_size_reads_decimal_and_binary_units(text, expected):
    """GB is 10^9 bytes, as Databento bills; GiB is 2^30."""
    from backend.jobs.core.units import parse_size

    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("6h", 21600), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("10", 10)]
)
def test_parse_duration_reads_hours_minutes_seconds(text, expected):
    from backend.jobs.core.units import parse_duration

    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-5", "6x", "h", "1h-3m"])
def test_parse_duration_refuses_what_is_not_a_positive_duration(text):
    from backend.jobs.core.units import parse_duration

    with pytest.raises(InvalidInputError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("engine", "estimate", "expected"),
    [
        ("auto", 6 * 10**9, "batch"),
        ("auto", 5 * 10**9, "stream"),
        ("stream", 10**12, "stream"),
        ("batch", 1, "batch"),
    ],
)
def test_choose_engine_uses_batch_above_the_threshold_only_in_auto(engine, estimate, expected):
    from backend.jobs.plan.preflight import choose_engine

    chosen, why = choose_engine(engine, estimate, 5 * 10**9)
    assert chosen == expected
    assert why


def test_job_request_recognises_its_own_job_among_others():
    """A lost submit's job is found by what it asks for, not by time alone."""
    from backend.jobs.core.ranges import TimeRange
    from backend.jobs.core.request import JobRequest
    from tests.helpers import YEAR_2023

    job = JobRequest("XNAS.ITCH", ("AAPL", "MSFT"), "trades", TimeRange(*YEAR_2023), "month")
    details = {
        "dataset": "XNAS.ITCH",
        "schema": "trades",
        "symbols": ["MSFT", "AAPL"],
        "start": "2023-01-01T00:00:00.000000000Z",
        "end": "2024-01-01T00:00:00.000000000Z",
        "split_duration": "month",
        "encoding": "dbn",
        "compression": "zstd",
        "split_symbols": False,
    }
    assert job.answered_by(details)
    assert not job.answered_by({**details, "schema": "tbbo"})
    assert not job.answered_by({**details, "end": "2023-12-31T00:00:00Z"})
    assert not job.answered_by({**details, "start": "garbage"})


def test_pacer_lets_20_submits_through_a_minute_then_makes_the_next_wait():
    """Databento allows 20 batch submits a minute, in any rhythm."""
    import threading

    from backend.jobs.client.retry import SUBMITS_PER_WINDOW, Pacer
    from backend.jobs.errors import RunStoppedError

    pacer, stop = Pacer(), threading.Event()
    for _ in range(SUBMITS_PER_WINDOW):
        pacer.wait("submit", stop)  # at once: a stop would make any wait raise
    stop.set()
    with pytest.raises(RunStoppedError):
        pacer.wait("submit", stop)  # the 21st must wait for the first to leave the window
