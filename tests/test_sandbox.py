"""The sandbox gateway, driven through the real databento SDK over loopback TLS."""

from __future__ import annotations

import contextlib
import gc
import io
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import databento
import numpy as np
import pytest
import requests
import zstandard
from databento.common.error import BentoWarning
from databento.common.http import BentoHttpAPI
from databento.common.symbology import InstrumentMap
from databento_dbn import Action, BidAskPair, MBP1Msg, Side, TradeMsg

from backend.sandbox import (
    MBP1_DTYPE,
    TRADE_DTYPE,
    Fault,
    SandboxGateway,
    day_record_bytes,
    expected_records,
    generate_day,
)
from tests.helpers import FIXTURES

REPO = Path(__file__).resolve().parents[1]

DAY_NS = 86_400 * 10**9
Y2023 = (1672531200 * 10**9, 1704067200 * 10**9)


def ns(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000


@pytest.fixture
def client(gateway: SandboxGateway, api_key: str) -> databento.Historical:
    return databento.Historical(key=api_key, gateway=gateway.gateway)


def get_range(client: databento.Historical, **kwargs: object) -> databento.DBNStore:
    params: dict[str, object] = {"dataset": "XNAS.ITCH", "schema": "trades", "symbols": "AAPL"}
    params.update(kwargs)
    return client.timeseries.get_range(**params)


def ts_recv(store: databento.DBNStore) -> np.ndarray:
    return np.array([record.ts_recv for record in store], dtype=np.uint64)


def download(client: databento.Historical, path: Path, **kwargs: object) -> list:
    """get_range(path=...) and read the records, closing the file the DBNStore keeps open."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        store = get_range(client, path=path, **kwargs)
        records = list(store)
        del store
        gc.collect()
    return records


def zstd_frames(body: bytes) -> list[bytes]:
    """The decompressed content of each zstd frame in `body`."""
    frames = []
    while body:
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        frames.append(decompressor.decompress(body))
        body = decompressor.unused_data
    return frames


@contextlib.contextmanager
def abandoned_files_closed_quietly() -> Iterator[None]:
    """The SDK leaves its file open after a failed stream; close it without a ResourceWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield
        gc.collect()


@pytest.mark.parametrize("schema", ["trades", "tbbo"])
def test_get_range_full_year_count_matches_expected_records(client, schema):
    """A 2023 request returns exactly expected_records() records of the schema's type."""
    store = get_range(client, schema=schema, start="2023-01-01", end="2024-01-01")
    records = list(store)
    assert len(records) == expected_records("XNAS.ITCH", "AAPL", schema, *Y2023, 20) == 260 * 20
    assert {type(r) for r in records} == {TradeMsg if schema == "trades" else MBP1Msg}


def test_get_range_intraday_bounds_count_matches_expected_records(client):
    """Mid-session start/end with sub-second resolution filter on ts_recv like the server."""
    start, end = "2023-03-01T15:00:00+00:00", "2023-03-10T18:30:00.5Z"
    store = get_range(client, schema="tbbo", start=start, end=end)
    stamps = ts_recv(store)
    expected = expected_records(
        "XNAS.ITCH", "AAPL", "tbbo", ns(start), ns("2023-03-10T18:30:00.5"), 20
    )
    assert len(stamps) == expected
    assert 0 < expected < 8 * 20


def test_get_range_records_ascending_inside_window(client):
    """Records are strictly ascending by ts_recv, inside [start, end) and 13:30-20:00 UTC."""
    start, end = ns("2023-01-01"), ns("2023-04-01")
    store = get_range(client, start=start, end=end)
    records = list(store)
    stamps = np.array([r.ts_recv for r in records], dtype=np.int64)
    assert np.all(np.diff(stamps) > 0)
    assert stamps[0] >= start
    assert stamps[-1] < end
    seconds_of_day = (stamps % DAY_NS) // 10**9
    assert seconds_of_day.min() >= 13.5 * 3600
    assert seconds_of_day.max() < 20 * 3600
    assert {r.publisher_id for r in records} == {2}
    assert {r.flags for r in records} == {130}
    assert {str(r.action) for r in records} == {"T"}
    assert {str(r.side) for r in records} == {"A", "B", "N"}
    assert all(r.ts_event < r.ts_recv for r in records)


def test_get_range_tbbo_book_brackets_trade_price(client):
    """TBBO levels have bid < ask and the trade printed at or inside the book."""
    store = get_range(client, schema="tbbo", start="2023-05-01", end="2023-05-06")
    for record in store:
        level = record.levels[0]
        assert 0 < level.bid_px < level.ask_px
        assert level.bid_px <= record.price <= level.ask_px
        assert level.bid_sz > 0
        assert level.ask_sz > 0


def test_get_range_metadata_matches_request(client):
    """Metadata carries the request's dataset, schema, start, end, symbols and stypes."""
    store = get_range(client, schema="tbbo", start="2023-02-01T14:00", end="2023-02-03")
    metadata = store.metadata
    assert metadata.version == 3
    assert metadata.dataset == "XNAS.ITCH"
    assert str(metadata.schema) == "tbbo"
    assert metadata.start == ns("2023-02-01T14:00")
    assert metadata.end == ns("2023-02-03")
    assert metadata.limit is None
    assert str(metadata.stype_in) == "raw_symbol"
    assert str(metadata.stype_out) == "instrument_id"
    assert metadata.symbols == ["AAPL"]
    assert metadata.partial == []
    assert metadata.not_found == []
    assert store.mappings == {
        "AAPL": [{"start_date": date(2023, 2, 1), "end_date": date(2023, 2, 3), "symbol": "38"}]
    }


def test_get_range_instrument_change_has_two_mapping_intervals(client):
    """MSFT's instrument_id change mid-2023 shows as two intervals and in the records."""
    store = get_range(client, symbols="MSFT", start="2023-01-01", end="2024-01-01")
    assert store.mappings == {
        "MSFT": [
            {"start_date": date(2023, 1, 1), "end_date": date(2023, 7, 3), "symbol": "7152"},
            {"start_date": date(2023, 7, 3), "end_date": date(2024, 1, 1), "symbol": "7153"},
        ]
    }
    switch = ns("2023-07-03")
    ids = {(r.ts_recv >= switch, r.instrument_id) for r in store}
    assert ids == {(False, 7152), (True, 7153)}


def test_get_range_listing_mid_year_is_partial(client):
    """NEWCO (listed 2023-06-12) is partial for 2023 with a clipped mapping and no earlier data."""
    store = get_range(client, symbols="NEWCO", start="2023-01-01", end="2024-01-01")
    assert store.metadata.partial == ["NEWCO"]
    assert store.metadata.not_found == []
    assert store.mappings == {
        "NEWCO": [{"start_date": date(2023, 6, 12), "end_date": date(2024, 1, 1), "symbol": "9001"}]
    }
    stamps = ts_recv(store)
    assert stamps.min() >= ns("2023-06-12")
    assert len(stamps) == expected_records("XNAS.ITCH", "NEWCO", "trades", *Y2023, 20)


def test_get_range_end_omitted_forward_fills_by_resolution(client):
    """Without `end` the server uses start + its resolution (a day, a minute, ...)."""
    by_day = get_range(client, start="2023-03-01")
    assert (by_day.metadata.start, by_day.metadata.end) == (ns("2023-03-01"), ns("2023-03-02"))
    assert len(list(by_day)) == 20
    by_minute = get_range(client, start="2023-03-01T15:00")
    assert by_minute.metadata.end == ns("2023-03-01T15:01")


def test_get_range_limit_truncates_and_is_recorded_in_metadata(client):
    """`limit` keeps the first N records and is written into the metadata."""
    full = list(get_range(client, start="2023-03-01", end="2023-03-08"))
    limited = get_range(client, start="2023-03-01", end="2023-03-08", limit=7)
    assert limited.metadata.limit == 7
    assert [r.ts_recv for r in limited] == [r.ts_recv for r in full[:7]]


def test_get_range_several_symbols_merge_by_ts_recv(client):
    """Several symbols are merged in ts_recv order; unknown ones go to not_found."""
    store = get_range(
        client, symbols=["AAPL", "BRK.B", "NOPE"], start="2023-03-06", end="2023-03-08"
    )
    records = list(store)
    assert store.metadata.not_found == ["NOPE"]
    assert sorted(store.mappings) == ["AAPL", "BRK.B"]
    assert {r.instrument_id for r in records} == {38, 2110}
    assert len(records) == 2 * 2 * 20
    stamps = [r.ts_recv for r in records]
    assert stamps == sorted(stamps)


def test_get_range_hundreds_of_added_symbols_all_mapped(client, gateway):
    """A POSTed request for 300 added symbols over two days maps and serves every one."""
    symbols = [f"SYM{index:03d}" for index in range(300)]
    for index, symbol in enumerate(symbols):
        gateway.add_symbol(symbol, [(date(2023, 1, 1), date(2024, 1, 1), 100_000 + index)])
    started = time.perf_counter()
    store = get_range(client, symbols=[*symbols, "NOPE"], start="2023-03-06", end="2023-03-08")
    records = list(store)
    assert time.perf_counter() - started < 5
    assert gateway.requests[-1].method == "POST"
    assert store.metadata.symbols == [*symbols, "NOPE"]
    assert store.metadata.not_found == ["NOPE"]
    assert store.metadata.partial == []
    assert sorted(store.mappings) == symbols
    assert store.mappings["SYM299"] == [
        {"start_date": date(2023, 3, 6), "end_date": date(2023, 3, 8), "symbol": "100299"}
    ]
    assert len(records) == 300 * 2 * 20
    assert {r.instrument_id for r in records} == {100_000 + index for index in range(300)}
    stamps = ts_recv(store)
    assert np.all(np.diff(stamps.astype(np.int64)) >= 0)


def test_get_range_equs_mini_uses_its_publisher_and_start(client):
    """EQUS.MINI serves publisher 95 from 2023-03-28 and refuses earlier starts."""
    store = get_range(client, dataset="EQUS.MINI", start="2023-03-28")
    records = list(store)
    assert len(records) == 20
    assert {r.publisher_id for r in records} == {95}
    assert {r.sequence for r in records} == {0}
    with pytest.raises(databento.BentoClientError) as excinfo:
        get_range(client, dataset="EQUS.MINI", start="2023-03-27")
    assert excinfo.value.json_body["detail"]["case"] == "data_start_before_available_start"


def test_get_range_same_request_twice_returns_identical_bytes(client, tmp_path):
    """Generation is deterministic: two identical requests produce identical bodies."""
    first, second = tmp_path / "a.dbn.zst", tmp_path / "b.dbn.zst"
    download(client, first, schema="tbbo", start="2023-01-01", end="2023-02-01")
    download(client, second, schema="tbbo", start="2023-01-01", end="2023-02-01")
    assert first.read_bytes() == second.read_bytes()


def test_get_range_single_frame_has_checksum_and_no_content_size(client, tmp_path):
    """Like the real server: one zstd frame, checksum on, content size absent."""
    target = tmp_path / "single.dbn.zst"
    download(client, target, start="2023-01-01", end="2023-02-01")
    body = target.read_bytes()
    frame = zstandard.get_frame_parameters(body)
    assert frame.has_checksum
    assert frame.content_size == zstandard.CONTENTSIZE_UNKNOWN
    (content,) = zstd_frames(body)
    assert content.startswith(b"DBN\x03")
    assert len(content) > 22 * 20 * 48


def test_get_range_per_day_frames_decode_across_frames(client, gateway, tmp_path):
    """frames="per_day" writes a metadata frame plus one frame per day; DBNStore reads them all."""
    gateway.frames = "per_day"
    target = tmp_path / "frames.dbn.zst"
    assert len(download(client, target, start="2023-01-02", end="2023-01-07")) == 5 * 20
    metadata_frame, *day_frames = zstd_frames(target.read_bytes())
    assert metadata_frame.startswith(b"DBN\x03")
    assert len(metadata_frame) % 8 == 0
    assert [len(frame) for frame in day_frames] == [20 * 48] * 5


def test_get_range_real_fixture_served_byte_identical(client, gateway, tmp_path):
    """A request matching a registered real sample gets the file's bytes verbatim."""
    for schema in ("trades", "tbbo"):
        sample = FIXTURES / f"test_data.{schema}.dbn.zst"
        gateway.add_fixture(sample)
        target = tmp_path / f"{schema}.dbn.zst"
        records = download(
            client, target, schema=schema, symbols="NVDA", start="2020-12-28", limit=4
        )
        assert target.read_bytes() == sample.read_bytes()
        assert [r.instrument_id for r in records] == [6155] * 4
    resolved = client.symbology.resolve(
        "XNAS.ITCH", ["NVDA"], "raw_symbol", "instrument_id", "2020-12-28", "2020-12-29"
    )
    assert resolved["result"] == {"NVDA": [{"d0": "2020-12-28", "d1": "2020-12-29", "s": "6155"}]}


def test_get_range_degraded_day_warns_with_bento_warning(client, gateway):
    """A degraded day in range sends X-Warning, which the SDK raises as a BentoWarning."""
    gateway.degraded_days = {date(2023, 3, 14)}
    with pytest.warns(BentoWarning, match=r"reduced quality: 2023-03-14 \(degraded\)"):
        get_range(client, start="2023-03-13", end="2023-03-16")
    get_range(client, start="2023-03-15", end="2023-03-16")  # no warning outside the day


@pytest.mark.parametrize(
    ("start", "end", "case"),
    [
        ("2023-01-01", "2025-07-01", "data_end_after_available_end"),
        ("2018-04-30", "2018-06-01", "data_start_before_available_start"),
        ("2025-06-01", "2025-06-02", "data_start_after_available_end"),
        ("2023-02-01", "2023-01-01", "data_time_range_start_on_or_after_end"),
    ],
)
def test_get_range_out_of_range_returns_422_case(client, start, end, case):
    """Range problems are 422 business errors with the real case names and payloads."""
    with pytest.raises(databento.BentoClientError) as excinfo:
        get_range(client, start=start, end=end)
    error = excinfo.value
    assert error.http_status == 422
    detail = error.json_body["detail"]
    assert detail["case"] == case
    assert detail["status_code"] == 422
    assert detail["payload"]["start"].endswith("Z")
    if case != "data_time_range_start_on_or_after_end":
        assert detail["payload"]["available_start"] == "2018-05-01T00:00:00.000000000Z"
        assert detail["payload"]["available_end"] == "2025-06-01T00:00:00.000000000Z"
    assert error.request_id


def test_get_range_unknown_symbol_returns_422_symbology_invalid_request(client):
    """No resolvable symbol is a 422 symbology_invalid_request."""
    with pytest.raises(databento.BentoClientError) as excinfo:
        get_range(client, symbols="ZZZZ", start="2023-01-01", end="2023-02-01")
    detail = excinfo.value.json_body["detail"]
    assert detail["case"] == "symbology_invalid_request"
    assert detail["message"] == "None of the symbols could be resolved"


def test_get_range_symbol_not_yet_listed_returns_422(client):
    """NEWCO before its listing resolves nowhere in range, so the request is rejected."""
    with pytest.raises(databento.BentoClientError) as excinfo:
        get_range(client, symbols="NEWCO", start="2023-01-01", end="2023-06-01")
    assert excinfo.value.json_body["detail"]["case"] == "symbology_invalid_request"


def range_counts(client: databento.Historical, **kwargs: object) -> list[int | float]:
    """metadata.get_record_count, get_billable_size and get_cost of one AAPL trades range."""
    params: dict[str, object] = {"dataset": "XNAS.ITCH", "schema": "trades", "symbols": "AAPL"}
    params.update(kwargs)
    return [
        client.metadata.get_record_count(**params),
        client.metadata.get_billable_size(**params),
        client.metadata.get_cost(**params),
    ]


def test_no_session_range_is_an_empty_stream_by_default(client, gateway):
    """A Sunday-only range streams a header with the mapping and no records; counts are 0."""
    assert gateway.no_session_answer == "empty"
    store = get_range(client, start="2023-01-01", end="2023-01-02")
    assert list(store) == []
    assert [i["symbol"] for i in store.mappings["AAPL"]] == ["38"]
    assert range_counts(client, start="2023-01-01", end="2023-01-02") == [0, 0, 0]


@pytest.mark.parametrize(
    ("start", "end"),
    [("2023-01-01", "2023-01-02"), ("2022-12-31", "2023-01-02"), ("2023-01-01T14:00", None)],
)
def test_no_session_answer_422_refuses_range_without_session_day(client, gateway, start, end):
    """With no_session_answer="422" a weekend-only range is 422 symbology_invalid_request,
    for get_range and for the metadata endpoints that share its validation."""
    gateway.no_session_answer = "422"
    calls = [
        lambda: get_range(client, start=start, end=end),
        lambda: client.metadata.get_record_count(
            "XNAS.ITCH", start=start, end=end, symbols="AAPL", schema="trades"
        ),
        lambda: client.metadata.get_billable_size(
            "XNAS.ITCH", start=start, end=end, symbols="AAPL", schema="trades"
        ),
        lambda: client.metadata.get_cost(
            "XNAS.ITCH", start=start, end=end, symbols="AAPL", schema="trades"
        ),
    ]
    for call in calls:
        with pytest.raises(databento.BentoClientError) as excinfo:
            call()
        assert excinfo.value.http_status == 422
        detail = excinfo.value.json_body["detail"]
        assert detail["case"] == "symbology_invalid_request"
        assert detail["message"] == "None of the symbols could be resolved"
        assert detail["payload"]["symbols"] == ["AAPL"]


def test_no_session_answer_422_still_streams_ranges_with_a_weekday(client, gateway):
    """A range touching a weekday streams its records; a weekday outside hours is just empty."""
    gateway.no_session_answer = "422"
    assert len(list(get_range(client, start="2022-12-31", end="2023-01-04"))) == 2 * 20
    assert range_counts(client, start="2022-12-31", end="2023-01-04")[0] == 2 * 20
    assert list(get_range(client, start="2023-01-02T00:00", end="2023-01-02T01:00")) == []


def test_no_session_answer_422_needs_a_session_day_for_the_requested_symbols(client, gateway):
    """A symbol listed only over a weekend has no session day even in a Friday-Monday range."""
    gateway.add_symbol("WKND", [(date(2023, 1, 7), date(2023, 1, 9), 77)])
    params = {"symbols": "WKND", "start": "2023-01-06", "end": "2023-01-10"}
    assert list(get_range(client, **params)) == []
    gateway.no_session_answer = "422"
    with pytest.raises(databento.BentoClientError) as excinfo:
        get_range(client, **params)
    assert excinfo.value.json_body["detail"]["case"] == "symbology_invalid_request"
    records = list(get_range(client, symbols="WKND,AAPL", start="2023-01-06", end="2023-01-10"))
    assert {r.instrument_id for r in records} == {38}


def test_no_session_answer_is_a_constructor_setting_restored_by_reset():
    """no_session_answer is set at construction, restored by reset() and validated."""
    gateway = SandboxGateway(no_session_answer="422")
    gateway.no_session_answer = "empty"
    gateway.reset()
    assert gateway.no_session_answer == "422"
    with pytest.raises(ValueError, match="no_session_answer"):
        SandboxGateway(no_session_answer="404")  # type: ignore[arg-type]


def test_get_range_unknown_dataset_returns_422_validation_list(client):
    """An unknown dataset fails FastAPI-style validation on the form field."""
    with pytest.raises(databento.BentoClientError) as excinfo:
        get_range(client, dataset="FOO.BAR", start="2023-01-01")
    (item,) = excinfo.value.json_body["detail"]
    assert item["loc"] == ["body", "dataset"]
    assert item["type"] == "enum"


def test_get_range_schema_without_data_returns_422(client):
    """Schemas other than trades/tbbo are refused with an explicit case."""
    with pytest.raises(databento.BentoClientError) as excinfo:
        get_range(client, schema="mbo", start="2023-01-03")
    assert excinfo.value.json_body["detail"]["case"] == "sandbox_schema_unsupported"


def test_get_range_unparseable_start_returns_422(gateway, api_key):
    """A malformed timestamp is a validation error naming the field."""
    response = requests.post(
        f"https://{gateway.gateway}/v0/timeseries.get_range",
        data={"dataset": "XNAS.ITCH", "start": "yesterday", "encoding": "dbn"},
        auth=(api_key, ""),
        verify=str(gateway.ca_path),
        timeout=10,
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "start"]


def test_auth_missing_credentials_returns_401_not_authenticated(gateway):
    """No Authorization header: FastAPI's 401 with WWW-Authenticate, and still recorded."""
    response = requests.get(
        f"https://{gateway.gateway}/v0/metadata.list_datasets",
        verify=str(gateway.ca_path),
        timeout=10,
    )
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    assert response.headers["WWW-Authenticate"] == "Basic"
    assert response.headers["request-id"]
    assert gateway.requests[-1].key is None


def test_auth_bad_key_raises_client_error_401(gateway):
    """A key the gateway rejects raises BentoClientError 401 auth_authentication_failed."""
    client = databento.Historical(key="not-a-databento-key-000000000000", gateway=gateway.gateway)
    with pytest.raises(databento.BentoClientError) as excinfo:
        get_range(client, start="2023-01-03")
    assert excinfo.value.http_status == 401
    assert excinfo.value.json_body["detail"]["case"] == "auth_authentication_failed"
    assert "auth_authentication_failed" in str(excinfo.value)


def test_auth_key_allowlist_rejects_other_keys(client, gateway, api_key):
    """With api_keys set only those keys are accepted."""
    gateway.api_keys = frozenset({"db-only-this-one"})
    with pytest.raises(databento.BentoClientError) as excinfo:
        client.metadata.list_datasets()
    assert excinfo.value.http_status == 401
    gateway.api_keys = frozenset({api_key})
    assert client.metadata.list_datasets() == ["EQUS.MINI", "XNAS.ITCH"]


def test_routing_unknown_path_returns_404_not_found(gateway, api_key):
    """Unknown paths answer FastAPI's 404 body."""
    response = requests.get(
        f"https://{gateway.gateway}/v0/batch.list_everything",
        auth=(api_key, ""),
        verify=str(gateway.ca_path),
        timeout=10,
    )
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_requests_every_call_recorded_with_key_and_params(client, gateway, api_key):
    """Successful and failed calls are recorded with endpoint, method, params and key."""
    get_range(client, start="2023-01-03")
    with pytest.raises(databento.BentoClientError):
        get_range(client, symbols="ZZZZ", start="2023-01-03")
    assert gateway.count("timeseries.get_range") == 2
    first = gateway.requests[0]
    assert first.method == "POST"
    assert first.key == api_key
    assert first.params["symbols"] == "AAPL"
    assert first.params["encoding"] == "dbn"
    assert first.params["compression"] == "zstd"


def test_fault_503_twice_then_request_succeeds(client, gateway):
    """A 503 fault hits the next two requests only."""
    gateway.add_fault(Fault(endpoint="timeseries.get_range", status=503, times=2))
    for _ in range(2):
        with pytest.raises(databento.BentoServerError) as excinfo:
            get_range(client, start="2023-01-03")
        assert excinfo.value.http_status == 503
        assert excinfo.value.json_body["detail"]["case"] == "gateway_unavailable"
    assert len(list(get_range(client, start="2023-01-03"))) == 20
    assert gateway.count("timeseries.get_range") == 3


def test_fault_429_retry_after_header_visible_on_exception(client, gateway):
    """429 carries Retry-After, readable from the SDK exception's headers."""
    gateway.add_fault(Fault(endpoint="metadata.get_cost", status=429, retry_after=3))
    with pytest.raises(databento.BentoClientError) as excinfo:
        client.metadata.get_cost("XNAS.ITCH", start="2023-01-03", symbols="AAPL")
    assert excinfo.value.http_status == 429
    assert excinfo.value.headers["Retry-After"] == "3"
    assert excinfo.value.json_body["detail"]["case"] == "rate_limit_exceeded"


def test_fault_detail_override_replaces_body(client, gateway):
    """`detail` replaces the fault body's detail verbatim."""
    detail = {"case": "data_schema_not_fully_available", "message": "m", "status_code": 422}
    gateway.add_fault(Fault(status=422, detail=detail))
    with pytest.raises(databento.BentoClientError) as excinfo:
        get_range(client, start="2023-01-03")
    assert excinfo.value.json_body == {"detail": detail}


def test_fault_match_only_hits_matching_requests(client, gateway):
    """A fault with `match` skips requests it does not match."""
    gateway.add_fault(Fault(status=500, match=lambda params: params.get("schema") == "tbbo"))
    assert len(list(get_range(client, schema="trades", start="2023-01-03"))) == 20
    with pytest.raises(databento.BentoServerError):
        get_range(client, schema="tbbo", start="2023-01-03")


def test_fault_cut_after_bytes_raises_and_leaves_partial_file(client, gateway, tmp_path):
    """A cut stream raises BentoError and the SDK leaves exactly the bytes received."""
    gateway.add_fault(Fault(cut_after_bytes=1000))
    target = tmp_path / "partial.dbn.zst"
    with (
        abandoned_files_closed_quietly(),
        pytest.raises(databento.BentoError, match="Error streaming response"),
    ):
        get_range(client, start="2023-01-01", end="2024-01-01", path=target)
    assert target.stat().st_size == 1000
    assert len(list(get_range(client, start="2023-01-03"))) == 20


def test_fault_cut_on_short_body_still_breaks_stream(client, gateway):
    """cut_after_bytes larger than the body still drops the final chunk."""
    gateway.add_fault(Fault(cut_after_bytes=10**9))
    with pytest.raises(databento.BentoError, match="Error streaming response"):
        get_range(client, start="2023-01-03")


def test_fault_without_effect_is_rejected():
    """A Fault must do something."""
    with pytest.raises(ValueError, match="needs a status"):
        Fault()


def test_fault_stall_fields_are_validated():
    """stall_after_bytes needs a positive stall_s and the other way round."""
    with pytest.raises(ValueError, match="go together"):
        Fault(stall_after_bytes=10)
    with pytest.raises(ValueError, match="go together"):
        Fault(status=500, stall_s=1.0)
    with pytest.raises(ValueError, match="stall_after_bytes must be >= 0"):
        Fault(stall_after_bytes=-1, stall_s=1.0)
    assert Fault(stall_after_bytes=0, stall_s=1.0).stall_after_bytes == 0


def test_fault_429_long_retry_after_arrives_verbatim(client, gateway):
    """A day-long Retry-After on a get_range 429 reaches the SDK exception unchanged."""
    gateway.add_fault(Fault(status=429, retry_after=86400))
    gateway.add_fault(Fault(endpoint="symbology.resolve", status=429, retry_after=86400.0))
    with pytest.raises(databento.BentoClientError) as excinfo:
        get_range(client, start="2023-01-03")
    assert excinfo.value.http_status == 429
    assert excinfo.value.headers["Retry-After"] == "86400"
    with pytest.raises(databento.BentoClientError) as excinfo:
        client.symbology.resolve(
            "XNAS.ITCH", ["AAPL"], "raw_symbol", "instrument_id", "2023-01-03", "2023-01-04"
        )
    assert excinfo.value.headers["Retry-After"] == "86400"


METADATA_CALLS = {
    "metadata.get_dataset_range": lambda c: c.metadata.get_dataset_range("XNAS.ITCH"),
    "symbology.resolve": lambda c: c.symbology.resolve(
        "XNAS.ITCH", ["AAPL"], "raw_symbol", "instrument_id", "2023-01-03", "2023-01-04"
    ),
    "metadata.get_cost": lambda c: c.metadata.get_cost(
        "XNAS.ITCH", start="2023-01-03", symbols="AAPL", schema="trades"
    ),
    "metadata.get_billable_size": lambda c: c.metadata.get_billable_size(
        "XNAS.ITCH", start="2023-01-03", symbols="AAPL", schema="trades"
    ),
}


@pytest.mark.parametrize("endpoint", list(METADATA_CALLS))
def test_fault_status_hits_metadata_endpoints(client, gateway, endpoint):
    """Status faults apply to the metadata and symbology endpoints, then are used up."""
    call = METADATA_CALLS[endpoint]
    gateway.add_fault(Fault(endpoint=endpoint, status=503))
    with pytest.raises(databento.BentoServerError) as excinfo:
        call(client)
    assert excinfo.value.http_status == 503
    assert call(client) is not None
    assert gateway.count(endpoint) == 2


@pytest.mark.parametrize("endpoint", list(METADATA_CALLS))
def test_fault_delay_stalls_first_byte_of_metadata_endpoints(
    client, gateway, monkeypatch, endpoint
):
    """delay_s holds back the whole answer: a short client read timeout fires, a long one
    just waits."""
    call = METADATA_CALLS[endpoint]
    monkeypatch.setattr(BentoHttpAPI, "TIMEOUT", 0.3)
    gateway.add_fault(Fault(endpoint=endpoint, delay_s=60))
    started = time.perf_counter()
    with pytest.raises(requests.exceptions.ReadTimeout):
        call(client)
    assert time.perf_counter() - started < 5
    monkeypatch.setattr(BentoHttpAPI, "TIMEOUT", 10)
    gateway.add_fault(Fault(endpoint=endpoint, delay_s=0.5))
    started = time.perf_counter()
    assert call(client) is not None
    assert time.perf_counter() - started >= 0.5


def test_fault_stall_after_bytes_times_out_mid_stream(client, gateway, monkeypatch, tmp_path):
    """A mid-body stall longer than the read timeout breaks the stream after exactly the bytes
    sent before it."""
    monkeypatch.setattr(BentoHttpAPI, "TIMEOUT", 0.5)
    gateway.add_fault(Fault(stall_after_bytes=1000, stall_s=60))
    target = tmp_path / "stalled.dbn.zst"
    started = time.perf_counter()
    with (
        abandoned_files_closed_quietly(),
        pytest.raises(databento.BentoError, match="Read timed out"),
    ):
        get_range(client, start="2023-01-01", end="2024-01-01", path=target)
    assert time.perf_counter() - started < 5
    assert target.stat().st_size == 1000
    assert len(list(get_range(client, start="2023-01-03"))) == 20


def test_fault_short_stall_after_bytes_then_body_completes(client, gateway):
    """A stall shorter than the read timeout only delays the body, which then completes."""
    gateway.add_fault(Fault(stall_after_bytes=200, stall_s=0.5))
    started = time.perf_counter()
    records = list(get_range(client, start="2023-01-02", end="2023-01-07"))
    assert time.perf_counter() - started >= 0.5
    assert len(records) == 5 * 20


@pytest.mark.parametrize("release", ["reset", "stop"])
@pytest.mark.parametrize(
    "fault",
    [Fault(delay_s=60), Fault(stall_after_bytes=100, stall_s=60)],
    ids=["delay_s", "stall_after_bytes"],
)
def test_fault_stall_ends_on_reset_or_stop(fault, release):
    """reset() and stop() end a stall in progress: the waiting client is dropped at once."""
    gateway = SandboxGateway().start()
    gateway.add_fault(fault)
    outcome: list[object] = []

    def fetch() -> None:
        try:
            with requests.post(
                f"https://{gateway.gateway}/v0/timeseries.get_range",
                data={"dataset": "XNAS.ITCH", "start": "2023-01-03", "encoding": "dbn"},
                auth=("db-test", ""),
                verify=str(gateway.ca_path),
                stream=True,
                timeout=30,
            ) as response:
                outcome.append(sum(len(chunk) for chunk in response.iter_content(64)))
        except requests.RequestException as error:
            outcome.append(error)

    worker = threading.Thread(target=fetch)
    try:
        worker.start()
        deadline = time.monotonic() + 5
        while gateway.count("timeseries.get_range") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # into the stall
        assert not outcome
        started = time.perf_counter()
        getattr(gateway, release)()
        worker.join(5)
        assert time.perf_counter() - started < 2
        assert not worker.is_alive()
        assert isinstance(outcome[0], requests.RequestException)
    finally:
        gateway.stop()


def test_metadata_cost_size_and_count_are_consistent(client, gateway):
    """billable size = count x record size; cost = size / 1e9 x price_per_gb."""
    gateway.price_per_gb = 2.5
    params = {"dataset": "XNAS.ITCH", "symbols": "MSFT", "start": "2023-01-01", "end": "2024-01-01"}
    for schema, size in (("trades", 48), ("tbbo", 80)):
        count = client.metadata.get_record_count(schema=schema, **params)
        billable = client.metadata.get_billable_size(schema=schema, **params)
        cost = client.metadata.get_cost(schema=schema, **params)
        assert count == expected_records("XNAS.ITCH", "MSFT", schema, *Y2023, 20)
        assert billable == count * size
        assert cost == pytest.approx(billable / 1e9 * 2.5)
    assert client.metadata.get_record_count(schema="trades", limit=5, **params) == 5


def test_metadata_get_dataset_range_reflects_override(client, gateway):
    """get_dataset_range returns ISO ns timestamps per schema; set_dataset_range overrides."""
    initial = client.metadata.get_dataset_range("XNAS.ITCH")
    assert initial["start"] == "2018-05-01T00:00:00.000000000Z"
    assert initial["end"] == "2025-06-01T00:00:00.000000000Z"
    assert initial["schema"]["trades"] == {"start": initial["start"], "end": initial["end"]}
    gateway.set_dataset_range("XNAS.ITCH", date(2020, 1, 1), datetime(2023, 6, 1, tzinfo=UTC))
    changed = client.metadata.get_dataset_range("XNAS.ITCH")
    assert changed["schema"]["tbbo"]["end"] == "2023-06-01T00:00:00.000000000Z"
    with pytest.raises(databento.BentoClientError):
        get_range(client, start="2023-05-01", end="2023-07-01")


def test_metadata_list_schemas_includes_trades_and_tbbo(client):
    """list_schemas answers a plain list for each dataset."""
    for dataset in ("XNAS.ITCH", "EQUS.MINI"):
        schemas = client.metadata.list_schemas(dataset)
        assert {"trades", "tbbo"} <= set(schemas)


def test_symbology_resolve_result_loads_into_sdk_instrument_map(client):
    """The 10-key resolve result is accepted by the SDK's InstrumentMap."""
    result = client.symbology.resolve(
        "XNAS.ITCH", ["MSFT", "NEWCO"], "raw_symbol", "instrument_id", "2023-01-01", "2024-01-01"
    )
    assert result["status"] == 1
    assert result["message"] == "Partially resolved"
    assert result["partial"] == ["NEWCO"]
    assert result["result"]["MSFT"] == [
        {"d0": "2023-01-01", "d1": "2023-07-03", "s": "7152"},
        {"d0": "2023-07-03", "d1": "2024-01-01", "s": "7153"},
    ]
    instrument_map = InstrumentMap()
    instrument_map.insert_json(result)
    assert instrument_map.resolve(7153, date(2023, 8, 1)) == "MSFT"
    assert instrument_map.resolve(9001, date(2023, 6, 12)) == "NEWCO"


def test_symbology_resolve_unknown_symbol_is_not_found(client):
    """An unknown symbol resolves to status 2 with an empty result."""
    result = client.symbology.resolve(
        "XNAS.ITCH", ["ZZZZ"], "raw_symbol", "instrument_id", "2023-01-01", "2023-02-01"
    )
    assert result["result"] == {}
    assert result["not_found"] == ["ZZZZ"]
    assert (result["status"], result["message"]) == (2, "Not found")


def test_symbology_added_symbol_is_served(client, gateway):
    """add_symbol intervals drive resolution, metadata mappings and record instrument_ids."""
    gateway.add_symbol(
        "XYZ",
        [(date(2023, 1, 1), date(2023, 7, 1), 1234), (date(2023, 7, 1), date(2024, 1, 1), 5678)],
    )
    store = get_range(client, symbols="XYZ", start="2023-06-29", end="2023-07-04")
    assert [i["symbol"] for i in store.mappings["XYZ"]] == ["1234", "5678"]
    assert {r.instrument_id for r in store} == {1234, 5678}


def resolve_aapl(client: databento.Historical, start_date: str, end_date: str) -> dict:
    return client.symbology.resolve(
        "XNAS.ITCH", ["AAPL"], "raw_symbol", "instrument_id", start_date, end_date
    )


@pytest.mark.parametrize(
    ("start_date", "end_date", "case"),
    [
        ("2025-05-01", "2025-06-02", "data_end_after_available_end"),
        ("2018-04-30", "2018-05-02", "data_start_before_available_start"),
        ("2025-06-01", "2025-06-02", "data_start_after_available_end"),
    ],
)
def test_symbology_resolve_outside_available_range_returns_422_case(
    client, start_date, end_date, case
):
    """resolve refuses dates outside the dataset with get_range's case names and payload."""
    with pytest.raises(databento.BentoClientError) as excinfo:
        resolve_aapl(client, start_date, end_date)
    error = excinfo.value
    assert error.http_status == 422
    detail = error.json_body["detail"]
    assert detail["case"] == case
    assert detail["status_code"] == 422
    assert detail["payload"] == {
        "dataset": "XNAS.ITCH",
        "start": f"{start_date}T00:00:00.000000000Z",
        "end": f"{end_date}T00:00:00.000000000Z",
        "available_start": "2018-05-01T00:00:00.000000000Z",
        "available_end": "2025-06-01T00:00:00.000000000Z",
    }
    field = "`end_date`" if case == "data_end_after_available_end" else "`start_date`"
    assert field in detail["message"]


def test_symbology_resolve_end_date_at_available_end_is_accepted(client):
    """end_date is exclusive: the available end's own date is the last one accepted."""
    result = resolve_aapl(client, "2025-05-30", "2025-06-01")
    assert result["status"] == 0
    assert result["result"]["AAPL"] == [{"d0": "2025-05-30", "d1": "2025-06-01", "s": "38"}]


def test_symbology_resolve_mid_day_available_end_refuses_its_end_date(client, gateway):
    """With data up to 12:00, end_date=that day is fine but the next day reaches past it."""
    gateway.available_end = datetime(2025, 6, 1, 12, tzinfo=UTC)
    assert resolve_aapl(client, "2025-05-30", "2025-06-01")["status"] == 0
    for start_date, end_date, case in [
        ("2025-05-30", "2025-06-02", "data_end_after_available_end"),
        ("2025-06-01", "2025-06-02", "data_end_after_available_end"),
        ("2025-06-02", "2025-06-03", "data_start_after_available_end"),
    ]:
        with pytest.raises(databento.BentoClientError) as excinfo:
            resolve_aapl(client, start_date, end_date)
        detail = excinfo.value.json_body["detail"]
        assert detail["case"] == case
        assert detail["payload"]["available_end"] == "2025-06-01T12:00:00.000000000Z"


def test_records_layout_matches_databento_dbn_classes():
    """The numpy dtypes encode byte-identically to databento_dbn TradeMsg and MBP1Msg."""
    fields = {
        "publisher_id": 2,
        "instrument_id": 38,
        "ts_event": 1_700_000_000_000_000_000,
        "price": 185_010_000_000,
        "size": 300,
        "action": Action.TRADE,
        "side": Side.BID,
        "depth": 0,
        "ts_recv": 1_700_000_000_000_011_000,
        "flags": 130,
        "ts_in_delta": 11_000,
        "sequence": 123_456,
    }
    book = {
        "bid_px": 185_000_000_000,
        "ask_px": 185_010_000_000,
        "bid_sz": 200,
        "ask_sz": 100,
        "bid_ct": 2,
        "ask_ct": 1,
    }
    for dtype, reference, length, rtype in (
        (TRADE_DTYPE, TradeMsg(**fields), 12, 0),
        (MBP1_DTYPE, MBP1Msg(**fields, levels=BidAskPair(**book)), 20, 1),
    ):
        record = np.zeros(1, dtype=dtype)
        record["length"], record["rtype"] = length, rtype
        for name, value in fields.items():
            record[name] = str(value).encode() if name in ("side", "action") else value
        if dtype is MBP1_DTYPE:
            for name, value in book.items():
                record[f"{name}_00"] = value
        assert record.tobytes() == bytes(reference)


def test_records_generated_day_decodes_with_sdk():
    """A generated day's bytes decode as the SDK's records with matching fields."""
    day = date(2023, 3, 1)
    records = generate_day("XNAS.ITCH", "MSFT", "tbbo", day, 50)
    metadata_end = ns("2023-03-02")
    from backend.sandbox.dbnstream import encode_metadata

    header = encode_metadata(
        dataset="XNAS.ITCH",
        schema="tbbo",
        start_ns=ns("2023-03-01"),
        end_ns=metadata_end,
        limit=None,
        symbols=["MSFT"],
        partial=[],
        not_found=[],
        mappings={},
    )
    store = databento.DBNStore.from_bytes(
        io.BytesIO(header + day_record_bytes("XNAS.ITCH", "MSFT", "tbbo", day, 50))
    )
    decoded = list(store)
    assert len(decoded) == 50
    assert [r.ts_recv for r in decoded] == records["ts_recv"].tolist()
    assert [r.levels[0].ask_px for r in decoded] == records["ask_px_00"].tolist()
    assert {r.instrument_id for r in decoded} == {7152}


def test_records_trades_and_tbbo_share_the_trade_stream():
    """The same day's trades and tbbo carry identical trade fields (one tbbo per trade)."""
    day = date(2023, 3, 1)
    trades = generate_day("XNAS.ITCH", "AAPL", "trades", day, 100)
    tbbo = generate_day("XNAS.ITCH", "AAPL", "tbbo", day, 100)
    for name in ("ts_recv", "ts_event", "price", "size", "side", "sequence"):
        assert np.array_equal(trades[name], tbbo[name])


def test_records_weekend_and_unlisted_days_are_empty():
    """Weekends and days before a listing have no records."""
    assert len(generate_day("XNAS.ITCH", "AAPL", "trades", date(2023, 3, 4), 100)) == 0
    assert len(generate_day("XNAS.ITCH", "NEWCO", "trades", date(2023, 6, 9), 100)) == 0
    assert len(generate_day("XNAS.ITCH", "NEWCO", "trades", date(2023, 6, 12), 100)) == 100


def test_expected_records_full_year_is_fast():
    """Counting a full year at 90,000 records/day needs no generation."""
    started = time.perf_counter()
    count = expected_records(
        "XNAS.ITCH", "AAPL", "trades", ns("2023-01-03T15:00"), Y2023[1], 90_000
    )
    assert time.perf_counter() - started < 0.5
    assert 258 * 90_000 < count < 259 * 90_000


def test_throttle_caps_bytes_per_second_per_connection(client, gateway, tmp_path):
    """throttle_bytes_per_s slows a get_range body to about that rate."""
    gateway.records_per_day = 2_000
    gateway.throttle_bytes_per_s = 400_000
    target = tmp_path / "slow.dbn.zst"
    started = time.perf_counter()
    download(client, target, start="2023-01-02", end="2023-01-05")
    elapsed = time.perf_counter() - started
    size = target.stat().st_size
    assert size > 100_000
    assert elapsed >= (size - 20_000) / 400_000 * 0.9


def test_latency_delays_every_get_range_answer_but_not_metadata(client, gateway):
    """latency_s holds back each get_range answer, errors included; metadata is not delayed."""
    gateway.latency_s = 0.3
    for _ in range(2):
        started = time.perf_counter()
        assert len(list(get_range(client, start="2023-01-03"))) == 20
        assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    with pytest.raises(databento.BentoClientError):
        get_range(client, symbols="ZZZZ", start="2023-01-03")
    assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    client.metadata.get_dataset_range("XNAS.ITCH")
    client.metadata.get_cost("XNAS.ITCH", start="2023-01-03", symbols="AAPL", schema="trades")
    assert time.perf_counter() - started < 0.3


def test_latency_is_a_constructor_setting_restored_by_reset():
    """latency_s is set at construction and restored by reset()."""
    gateway = SandboxGateway(latency_s=0.25)
    assert gateway.latency_s == 0.25
    gateway.latency_s = 0.0
    gateway.reset()
    assert gateway.latency_s == 0.25
    assert SandboxGateway().latency_s == 0.0


def test_latency_wait_ends_on_reset(gateway):
    """reset() ends a latency wait in progress like a delay_s fault: the client is dropped."""
    gateway.latency_s = 60
    outcome: list[object] = []

    def fetch() -> None:
        try:
            response = requests.post(
                f"https://{gateway.gateway}/v0/timeseries.get_range",
                data={"dataset": "XNAS.ITCH", "start": "2023-01-03", "encoding": "dbn"},
                auth=("db-test", ""),
                verify=str(gateway.ca_path),
                timeout=30,
            )
            outcome.append(response.status_code)
        except requests.RequestException as error:
            outcome.append(error)

    worker = threading.Thread(target=fetch)
    worker.start()
    deadline = time.monotonic() + 5
    while gateway.in_flight() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # into the wait
    assert not outcome
    started = time.perf_counter()
    gateway.reset()
    worker.join(5)
    assert time.perf_counter() - started < 2
    assert not worker.is_alive()
    assert isinstance(outcome[0], requests.RequestException)
    assert gateway.latency_s == 0.0


def test_max_in_flight_counts_concurrent_requests_per_endpoint(gateway, api_key):
    """Three concurrent get_range calls are in flight together; sequential ones never overlap;
    metadata calls are counted apart; reset() clears the maxima."""
    gateway.latency_s = 0.5
    barrier = threading.Barrier(3)
    counts: list[int] = []

    def fetch() -> None:
        client = databento.Historical(key=api_key, gateway=gateway.gateway)
        barrier.wait(5)
        counts.append(len(list(get_range(client, start="2023-01-03"))))

    workers = [threading.Thread(target=fetch) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert counts == [20, 20, 20]
    assert gateway.max_in_flight() == 3
    assert gateway.max_in_flight("timeseries.get_range") == 3
    assert gateway.max_in_flight("metadata.get_dataset_range") == 0

    gateway.reset()
    assert gateway.max_in_flight() == 0
    client = databento.Historical(key=api_key, gateway=gateway.gateway)
    for _ in range(3):
        get_range(client, start="2023-01-03")
        client.metadata.get_dataset_range("XNAS.ITCH")
    assert gateway.max_in_flight() == 1
    assert gateway.max_in_flight("metadata.get_dataset_range") == 1
    gateway.reset()
    assert gateway.max_in_flight() == 0
    assert gateway.max_in_flight("metadata.get_dataset_range") == 0


def test_stop_during_stream_returns_promptly(tmp_path):
    """stop() while a client is mid-download does not hang, and the client sees an error."""
    gateway = SandboxGateway(records_per_day=2_000, throttle_bytes_per_s=50_000).start()
    errors: list[BaseException] = []

    def download() -> None:
        session = requests.Session()
        try:
            with session.post(
                f"https://{gateway.gateway}/v0/timeseries.get_range",
                data={
                    "dataset": "XNAS.ITCH",
                    "start": "2023-01-02",
                    "end": "2023-02-01",
                    "symbols": "AAPL",
                    "encoding": "dbn",
                    "compression": "zstd",
                },
                auth=("db-test", ""),
                verify=str(gateway.ca_path),
                stream=True,
                timeout=10,
            ) as response:
                for _ in response.iter_content(4096):
                    pass
        except requests.RequestException as error:
            errors.append(error)
        finally:
            session.close()

    worker = threading.Thread(target=download)
    worker.start()
    time.sleep(0.3)
    started = time.perf_counter()
    gateway.stop()
    assert time.perf_counter() - started < 2
    worker.join(5)
    assert not worker.is_alive()
    assert errors


def test_cli_serve_writes_state_and_stops_on_sigterm(tmp_path):
    """`serve` writes ca.pem then the gateway file, answers, and exits 0 on SIGTERM."""
    state = tmp_path / "state"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backend.sandbox",
            "serve",
            "--state-dir",
            str(state),
            "--available-end",
            "2024-01-01",
            "--latency-s",
            "0.3",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not (state / "gateway").exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        address = (state / "gateway").read_text()
        response = requests.get(
            f"https://{address}/v0/metadata.get_dataset_range",
            params={"dataset": "XNAS.ITCH"},
            auth=("db-cli", ""),
            verify=str(state / "ca.pem"),
            timeout=10,
        )
        assert response.json()["end"] == "2024-01-01T00:00:00.000000000Z"
        started = time.perf_counter()
        response = requests.post(
            f"https://{address}/v0/timeseries.get_range",
            data={"dataset": "XNAS.ITCH", "start": "2023-01-03", "encoding": "dbn"},
            auth=("db-cli", ""),
            verify=str(state / "ca.pem"),
            timeout=10,
        )
        assert response.status_code == 200
        assert time.perf_counter() - started >= 0.3
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert address in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_frame_cache_prewarmed_year_decodes_like_a_live_single_frame_stream(tmp_path, monkeypatch):
    """The benchmark's prebuilt stand-in serves the same DBN stream, only cheaper to produce."""
    live = SandboxGateway(records_per_day=50, available_end=datetime(2025, 1, 1, tzinfo=UTC))
    cached = SandboxGateway(
        records_per_day=50,
        available_end=datetime(2025, 1, 1, tzinfo=UTC),
        frames="per_day",
        frame_cache_mb=64,
    )
    assert cached.prewarm("XNAS.ITCH", "AAPL", "trades", 2023) > 0
    bodies = []
    with live, cached:
        for gateway in (live, cached):
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(gateway.ca_path))
            path = tmp_path / f"{len(bodies)}.dbn.zst"
            client = databento.Historical(key="db-" + "x" * 29, gateway=gateway.gateway)
            store = client.timeseries.get_range(
                dataset="XNAS.ITCH",
                symbols=["AAPL"],
                schema="trades",
                start="2023-03-01",
                end="2023-04-01",
                path=path,
            )
            store.reader.close()
            reader = zstandard.ZstdDecompressor().stream_reader(
                path.read_bytes(), read_across_frames=True
            )
            bodies.append(reader.read())
    assert bodies[0] == bodies[1]
    assert len(bodies[0]) > 50 * 20 * 48
