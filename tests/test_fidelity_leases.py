"""Leases on an S3 prefix across machines, containers and PID namespaces (issue 15).

A lease's holder is named by host, boot id and PID namespace as well as pid, so a pid is only
ever checked by a process that sees the same pids: containers sharing a hostname no longer take
each other's live leases over. The takeover decision is pure and tested as a table; the CLI
runs go through the real SDK, the sandbox gateway and a real local S3 server (moto).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.jobs.store.leases import Holder, Lease, takeover
from backend.sandbox.s3server import LocalS3Server
from tests.helpers import completions

BUCKET = "bento-leases"
URL = f"s3://{BUCKET}/shared"
LEASE_KEY = "shared/raw/databento/.locks/AAPL/2023/TRADES.lock"
GET_RANGE = "timeseries.get_range"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LIVE = NOW + timedelta(seconds=30)
ME = Holder("me", host="vm", boot_id="boot-1", pid_ns=4026531836, pid=100)
UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc")


def dead(_pid: int) -> bool:
    return False


def alive(_pid: int) -> bool:
    return True


# the decision, pure


@pytest.mark.parametrize(
    ("holder", "expires_at", "released", "is_alive", "expected"),
    [
        (replace(ME, pid=200), LIVE, False, dead, "its process no longer exists"),
        (replace(ME, pid=200), LIVE, False, alive, None),
        (replace(ME, pid=200, pid_ns=4026532179), LIVE, False, dead, None),
        (replace(ME, pid=200, boot_id="boot-2"), LIVE, False, dead, None),
        (replace(ME, pid=200, host="other"), LIVE, False, dead, None),
        (Holder("vm:200:0123abcd"), LIVE, False, dead, None),  # an older lease: no namespace
        (replace(ME, pid=200, pid_ns=4026532179), NOW, False, alive, "expired"),
        (replace(ME, pid=200, host="other"), LIVE, True, alive, "released"),
    ],
    ids=[
        "same-namespace-dead",
        "same-namespace-alive",
        "other-pid-namespace-dead",
        "other-boot-dead",
        "other-host-dead",
        "older-lease-dead",
        "other-namespace-expired",
        "released",
    ],
)
def test_takeover_decision_takes_only_provably_dead_or_expired_leases(
    holder, expires_at, released, is_alive, expected
):
    """A pid is checked only in the namespace it names; anything else waits for the expiry."""
    lease = Lease(holder, expires_at, released=released)
    assert takeover(lease, ME, NOW, is_alive) == expected


def test_takeover_decision_takes_an_unreadable_lease():
    """An object that is not a lease this tool wrote blocks nobody."""
    assert takeover(None, ME, NOW, alive) == "unreadable"


def test_takeover_decision_without_a_known_namespace_waits_for_the_expiry():
    """Where boot id or PID namespace cannot be read (not Linux), no pid is trusted."""
    unknown = Holder("me", host="vm", pid=100)
    lease = Lease(replace(unknown, pid=200), LIVE)
    assert takeover(lease, unknown, NOW, dead) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (  # an older version's lease: read, its label kept, its namespace unknown
            {"holder": "other-host:1:busy", "expires_at": "2030-01-01T00:00:00+00:00"},
            Lease(Holder("other-host:1:busy"), datetime(2030, 1, 1, tzinfo=UTC)),
        ),
        (  # fields of the wrong type count as unknown, never as a match
            {
                "holder": "h",
                "host": 7,
                "boot_id": "",
                "pid_ns": True,
                "pid": "12",
                "expires_at": "2030-01-01T00:00:00+00:00",
                "released": "yes",
            },
            Lease(Holder("h"), datetime(2030, 1, 1, tzinfo=UTC)),
        ),
        ({"holder": "h", "expires_at": "2030-01-01T00:00:00"}, None),  # no time zone
        ({"holder": "h"}, None),
        ([1, 2], None),
        ("lease", None),
    ],
    ids=["older", "wrong-types", "naive-time", "no-expiry", "a-list", "a-string"],
)
def test_lease_parse_reads_older_and_foreign_records_defensively(body, expected):
    """Whatever the object holds, parsing never raises; what it cannot trust it leaves unknown."""
    assert Lease.parse(json.dumps(body).encode()) == expected


def test_lease_body_round_trips_and_its_label_fools_no_older_version():
    """Older versions took `host:pid:…` of their own host over when the pid was invisible."""
    me = Holder.current()
    lease = Lease(me, LIVE)
    assert Lease.parse(lease.body()) == lease
    assert me.sees_pids_of(Lease.parse(lease.body()).holder)
    assert ":" not in me.label
    assert str(os.getpid()) in me.label


# through the CLI and a real S3 server


def put_lease(s3: LocalS3Server, holder: Holder) -> None:
    body = Lease(holder, datetime.now(UTC) + timedelta(minutes=5)).body()
    s3.client().put_object(Bucket=BUCKET, Key=LEASE_KEY, Body=body)


def exited_pid() -> int:
    """The pid of a process of this namespace that has ended (and was reaped)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


def run_trades(cli, work: Path, *extra: str):
    return cli(
        *("data", "--symbol", "AAPL", "--year", "2023", "--products", "trades"),
        *("--data-dir", URL, "--work-dir", str(work), *extra),
    )


def test_live_lease_of_a_dead_process_in_this_namespace_is_taken_over_at_once(
    gateway, s3, cli, tmp_path
):
    """A killed run of this very machine and container blocks nobody until its expiry."""
    put_lease(s3, replace(Holder.current(), pid=exited_pid(), label="killed run"))
    result = run_trades(cli, tmp_path / "work", "--lock-timeout", "0")
    assert result.exit_code == 0, result.output
    assert "took over the lease on AAPL 2023 TRADES from killed run" in result.stdout
    assert "its process no longer exists" in result.stdout


def test_live_lease_of_another_pid_namespace_is_waited_for_not_taken(gateway, s3, cli, tmp_path):
    """The same pid, dead here, may be alive in the other container: wait, then refuse."""
    other = Holder.current()
    other = replace(other, pid=exited_pid(), pid_ns=(other.pid_ns or 0) + 1, label="container")
    put_lease(s3, other)
    result = run_trades(cli, tmp_path / "work", "--lock-timeout", "1")
    assert result.exit_code == 1
    assert "another run (container) holds the lease on AAPL 2023 TRADES" in result.stderr
    assert gateway.count(GET_RANGE) == 0


def unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, check=False)
    return probe.returncode == 0


def test_two_runs_in_separate_pid_namespaces_on_one_prefix_download_once(
    slow_gateway, s3, tmp_path
):
    """Containers sharing a hostname: the second waits on the first's lease, then skips."""
    if not unshare_works():
        pytest.skip("needs `unshare --pid --fork --mount-proc` (root, util-linux)")
    env = {**slow_gateway.env, **s3.env(), "PYTHONUNBUFFERED": "1"}

    def command(work: str) -> list[str]:
        return [
            *(sys.executable, "-m", "backend.jobs.cli", "data", "--symbol", "AAPL"),
            *("--year", "2023", "--products", "trades", "--chunk", "month"),
            *("--data-dir", URL, "--work-dir", str(tmp_path / work)),
        ]

    first = subprocess.Popen(command("a"), env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while slow_gateway.count(GET_RANGE) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(
        [*UNSHARE, *command("b")], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0
    assert second.returncode == 0, second.stderr
    assert "another run (" in second.stdout  # it waited ...
    assert "took over" not in second.stdout  # ... and never took the live lease
    statuses = [completions(out)[0]["status"], completions(second.stdout)[0]["status"]]
    assert statuses == ["downloaded", "skipped"]
    assert slow_gateway.count(GET_RANGE) == 12  # each month once, not 24
