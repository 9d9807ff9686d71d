"""Small pure pieces: settings, cache decisions, retry delays, mapping coalescing, DBN checks."""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path

import pytest
import zstandard

from backend.jobs.chunks import RetryPolicy
from backend.jobs.dbnfile import read_metadata, scan
from backend.jobs.errors import CorruptFileError, InvalidInputError
from backend.jobs.manifest import CacheState, cache_state
from backend.jobs.merge import coalesce
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
    assert settings.gateway == "https://127.0.0.1:1"
    assert settings.data_dir == tmp_path


def test_secret_never_shows_its_value():
    """repr/str of settings end up in tracebacks and logs."""
    secret = Secret("db-verysecret")
    assert "verysecret" not in repr(secret)
    assert "verysecret" not in str(Settings(secret, None, Path(), None))


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_settings_rejects_a_bad_max_cost(value):
    """A budget that is not a non-negative number is an input error, not 'no budget'."""
    with pytest.raises(InvalidInputError, match="DATABENTO_MAX_COST"):
        Settings.from_env({"DATABENTO_MAX_COST": value})


@pytest.mark.parametrize(
    ("size", "entry", "state"),
    [
        (None, None, CacheState.MISSING),
        (0, {"bytes": 0}, CacheState.MISSING),
        (10, None, CacheState.UNRECORDED),
        (10, {"bytes": 11}, CacheState.SIZE_MISMATCH),
        (10, {"bytes": 10}, CacheState.OK),
    ],
)
def test_cache_state_decides_from_size_and_manifest(size, entry, state):
    """The skip rule is pure: file size against the manifest entry."""
    assert cache_state(size, entry) is state


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
