"""The store interface: a local folder and an S3 bucket give the same answers, and leases built
on its conditional writes keep one writer per key on any store.

The bucket is a real S3 protocol server (moto, on a loopback port); nothing is mocked.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from loguru import logger

from backend.jobs.core.locations import StoreLocation
from backend.jobs.errors import IngestError, InvalidInputError
from backend.jobs.store import open_store
from backend.jobs.store.base import ConflictError, LockRequest, Store
from backend.jobs.store.leases import Holder, Lease, Leases
from backend.jobs.store.local import LocalStore
from backend.sandbox.s3server import LocalS3Server

BUCKET = "bento-store"
LOCK = LockRequest("raw/databento/.locks/AAPL/2023/TRADES.lock", "AAPL 2023 TRADES")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """Each test below runs on a local folder and on a bucket, opened as a run opens them."""
    if request.param == "local":
        return open_store(StoreLocation(str(tmp_path / "data")))
    server: LocalS3Server = request.getfixturevalue("s3_server")
    server.reset()
    server.create_bucket(BUCKET)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return open_store(StoreLocation(f"s3://{BUCKET}/team", allow_http=True))


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "data")


@pytest.fixture
def messages() -> Iterator[list[str]]:
    """What the run logs, one message per line."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


def test_store_write_creates_only_if_absent_and_replaces_only_the_version_read(store):
    """The one primitive leases and manifest merges rest on: a lost race is a ConflictError."""
    first = store.write("k/a.json", b"1", expected=None)
    with pytest.raises(ConflictError):
        store.write("k/a.json", b"2", expected=None)
    second = store.write("k/a.json", b"3", expected=first)
    with pytest.raises(ConflictError):
        store.write("k/a.json", b"4", expected=first)
    assert store.read("k/a.json") == (b"3", second)


def test_store_reads_lists_and_deletes_by_key(store):
    """Keys are POSIX paths; a missing one reads as None; a listing gives every key below."""
    store.put("raw/x/one.bin", b"abc")
    store.put("raw/y/two.bin", b"defg")
    assert store.read("raw/nope") is None
    assert store.head("raw/nope") is None
    assert store.head("raw/y/two.bin").size == 4
    assert sorted((i.key, i.size) for i in store.listing("raw")) == [
        ("raw/x/one.bin", 3),
        ("raw/y/two.bin", 4),
    ]
    with store.reader("raw/x/one.bin") as source:
        assert source.read(2) + source.read(10) == b"abc"
    store.delete("raw/x/one.bin")
    store.delete("raw/x/one.bin")  # deleting what is gone is fine
    assert [i.key for i in store.listing("raw")] == ["raw/y/two.bin"]


def test_store_publish_turns_a_finished_file_into_the_object(store, tmp_path):
    """The temp file becomes the object whole; the store's where() names it for messages."""
    folder = tmp_path / "data" / "raw"
    folder.mkdir(parents=True)
    temp = folder / ".f.bin.123-0123456789ab.tmp"
    temp.write_bytes(b"payload")
    store.publish(temp, "raw/f.bin")
    assert store.read("raw/f.bin")[0] == b"payload"
    assert store.where("raw/f.bin").endswith("raw/f.bin")


@pytest.mark.parametrize(
    ("url", "kind"),
    [("folder", "LocalStore"), ("s3://bento-store/x", "S3Store")],
)
def test_open_store_opens_a_folder_or_a_bucket(tmp_path, url, kind):
    """Plain values in, a store out: what another process needs to open the same store."""
    location = StoreLocation(url if "://" in url else str(tmp_path / url), allow_http=True)
    assert type(open_store(location)).__name__ == kind


def test_open_store_refuses_another_scheme_naming_its_source():
    """Exit 2, the URL shown with its password masked."""
    with pytest.raises(InvalidInputError, match=r"^DATA_DIR 'gs://u:\*\*\*@b/x' is neither"):
        open_store(StoreLocation("gs://u:pw@b/x", "DATA_DIR"))


def test_s3_credentials_only_in_an_aws_profile_are_used(s3_server, tmp_path, monkeypatch):
    """~/.aws profiles (and SSO) reach obstore through boto3's credential chain: obstore alone
    reads none and falls back to the instance metadata endpoint (AWS_PROFILE is contract)."""
    from backend.jobs.settings import Settings
    from backend.sandbox.s3server import ACCESS_KEY, SECRET_KEY

    s3_server.reset()
    s3_server.create_bucket(BUCKET)
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[research]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "AWS_PROFILE": "research",
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_REGION": "us-east-1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(data_dir=f"s3://{BUCKET}/team")
    assert settings.store_location().aws_profile
    store = open_store(settings.store_location())
    store.put("k", b"signed with the profile's key")
    assert store.read("k")[0] == b"signed with the profile's key"


# leases over the conditional writes, on a local store (the bucket's are in test_s3.py and
# test_fidelity_leases.py)


def other_run(store: Store) -> Leases:
    """Another live run of this machine (this very process: its pid is alive)."""
    leases = Leases(store)
    leases.holder = replace(leases.holder, label="other run")
    return leases


def test_leases_on_a_local_store_make_a_second_run_wait_then_refuse(local):
    """A live lease is never taken: the second run waits up to its timeout, then says who."""
    with other_run(local).held([LOCK], timeout_s=0):
        started = time.monotonic()
        refused = "another run \\(other run\\) holds the lease on AAPL"
        with pytest.raises(IngestError, match=refused), Leases(local).held([LOCK], timeout_s=0.5):
            pass
        assert time.monotonic() - started >= 0.5


def test_leases_released_are_marked_so_and_taken_at_once(local, messages):
    """Released, never deleted: the next run takes it without waiting or a takeover line."""
    with other_run(local).held([LOCK], timeout_s=0):
        pass
    assert Lease.parse(local.read(LOCK.key)[0]).released
    with Leases(local).held([LOCK], timeout_s=0):
        assert not Lease.parse(local.read(LOCK.key)[0]).released
    assert not [line for line in messages if "took over" in line]


def test_leases_expired_is_taken_over_with_a_line_saying_why(local, messages):
    """A holder that stopped renewing blocks others only until its lease expires."""
    gone = Holder("dead machine", host="elsewhere", pid=1)
    local.put(LOCK.key, Lease(gone, datetime.now(UTC) - timedelta(seconds=1)).body())
    with Leases(local).held([LOCK], timeout_s=0):
        assert Lease.parse(local.read(LOCK.key)[0]).holder.pid == os.getpid()
    assert "took over the lease on AAPL 2023 TRADES from dead machine (expired)" in messages


def test_leases_are_renewed_and_a_lease_taken_over_is_reported_lost(local):
    """Renewed a third of the way through their life; a conflicting write marks them lost."""
    leases = Leases(local, ttl_s=0.3)
    with leases.held([LOCK], timeout_s=0):
        first = Lease.parse(local.read(LOCK.key)[0]).expires_at
        time.sleep(0.25)
        assert Lease.parse(local.read(LOCK.key)[0]).expires_at > first
        local.put(LOCK.key, Lease(Holder("thief"), datetime.now(UTC)).body())
        deadline = time.monotonic() + 5
        while not leases.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert leases.lost.is_set()
    assert Lease.parse(local.read(LOCK.key)[0]).holder.label == "thief"  # theirs, untouched


def test_leases_taken_in_key_order_never_deadlock(local):
    """Two runs asking for the same keys in opposite orders both finish."""
    second = LockRequest("raw/databento/.locks/MSFT/2023/TRADES.lock", "MSFT 2023 TRADES")
    done: list[str] = []

    def run(name: str, locks: list[LockRequest]) -> None:
        with Leases(local).held(locks, timeout_s=10):
            time.sleep(0.05)
        done.append(name)

    runs = [
        threading.Thread(target=run, args=("a", [LOCK, second])),
        threading.Thread(target=run, args=("b", [second, LOCK])),
    ]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(timeout=30)
    assert sorted(done) == ["a", "b"]


def test_local_locks_refuse_a_linked_working_folder_but_follow_a_linked_data_folder(tmp_path):
    """`raw` may live on another disk; `.locks` is the tool's and must be a real folder."""
    disk = tmp_path / "disk"
    (disk / "raw" / "databento").mkdir(parents=True)
    data = tmp_path / "data"
    data.mkdir()
    (data / "raw").symlink_to(disk / "raw")
    with LocalStore(data).locked([LOCK], timeout_s=0):
        assert (disk / "raw/databento/.locks/AAPL/2023/TRADES.lock").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    linked = tmp_path / "linked"
    (linked / "raw" / "databento").mkdir(parents=True)
    (linked / "raw" / "databento" / ".locks").symlink_to(foreign)
    with (
        pytest.raises(IngestError, match="is a symbolic link"),
        LocalStore(linked).locked([LOCK], timeout_s=0),
    ):
        pass
    assert list(foreign.iterdir()) == []
