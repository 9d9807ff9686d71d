"""`data --cluster`: the unit of work on a real Dask scheduler and worker processes (loopback),
against the sandbox gateway (through the real SDK) and the local S3 server."""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dask
import pytest
from distributed import Client, LocalCluster

from backend.jobs.core.locations import StoreLocation
from backend.jobs.engines import cluster as cluster_engine
from backend.jobs.store import open_store
from backend.sandbox import SandboxGateway

UNIVERSE = (
    "--symbols",
    "AAPL,MSFT,BRK.B,NEWCO",
    "--year",
    "2024",
    "--group-size",
    "2",
    "--chunk",
    "month",
)
BUCKET = "bento-cluster"
# One xdist worker runs them all around one LocalCluster: several clusters of worker processes
# at once on two cores starve each other (tasks seen waiting past the 120 s test timeout).
pytestmark = pytest.mark.xdist_group("dask-cluster")
NOBODY = "tcp://127.0.0.1:9"  # no scheduler there: a run that reaches it fails (exit 1)
GET_RANGE = "timeseries.get_range"


@dataclass
class Cluster:
    address: str
    client: Client
    key: str

    def workers_env(self, **values: str | None) -> None:
        """Set (or, with None, remove) variables in every worker's own environment."""

        def apply(values: dict[str, str | None]) -> None:
            for name, value in values.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

        self.client.run(apply, values)

    def tasks_by_worker(self) -> dict[str, int]:
        """How many of our tasks each worker ran (from its state machine's log)."""

        def ran(dask_worker: Any) -> int:
            keys = {entry[0] for entry in dask_worker.state.log if entry[1] == "executing"}
            keys |= {e[0] for e in dask_worker.state.log if "execute" in str(e[1:3])}
            return sum(1 for key in keys if str(key).startswith("group-"))

        return self.client.run(ran)


@pytest.fixture(scope="module")
def cluster(sandbox: SandboxGateway) -> Iterator[Cluster]:
    """A scheduler and two single-threaded worker processes, the key in their environment."""
    key = "db-" + secrets.token_hex(15)[:29]
    env = {
        "REQUESTS_CA_BUNDLE": str(sandbox.ca_path),
        "SSL_CERT_FILE": str(sandbox.ca_path),
        "DATABENTO_API_KEY": key,
        # a killed worker's connection lease goes back to the others within seconds
        "DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_TIMEOUT": "3s",
    }
    fast_leases = {
        "distributed.scheduler.locks.lease-timeout": "3s",
        "distributed.scheduler.locks.lease-validation-interval": "500ms",
    }
    with (
        dask.config.set(fast_leases),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",  # a free port: another cluster may hold 8787
            env=env,
        ) as local,
        Client(local) as client,
    ):
        yield Cluster(local.scheduler_address, client, key)


def objects(location: str, *, allow_http: bool = False) -> dict[str, Any]:
    """Every object of a data dir: file bodies, manifests without their timestamps."""
    store = open_store(StoreLocation(location, allow_http=allow_http))
    found: dict[str, Any] = {}
    for info in store.listing("raw/databento"):
        if "/." in info.key or not info.is_file:
            continue
        body, _ = store.read(info.key)
        if info.key.endswith("manifest.json"):
            entries = json.loads(body)["products"]
            body = {name: (e["sha256"], e["records"], e["bytes"]) for name, e in entries.items()}
        found[info.key] = body
    return found


def asked(gateway: SandboxGateway) -> list[tuple[str, str]]:
    """(symbols, start) of each get_range the gateway was sent."""
    return sorted(
        (request.params.get("symbols", ""), request.params.get("start", ""))
        for request in gateway.requests
        if request.endpoint == GET_RANGE
    )


def test_cluster_universe_on_two_workers_equals_a_local_run_and_asks_each_range_once(
    cluster, gateway, s3_server, cli, tmp_path, monkeypatch
):
    """A bucket filled by two workers holds what an in-process run writes, each range asked
    once, at most --jobs streams at a time across the cluster."""
    local = tmp_path / "local"
    assert cli("data", *UNIVERSE, "--data-dir", str(local)).exit_code == 0
    in_process = asked(gateway)
    gateway.reset()
    s3_server.reset()
    s3_server.create_bucket(BUCKET)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    cluster.workers_env(**s3_server.env())
    before = cluster.tasks_by_worker()
    url = f"s3://{BUCKET}/cache"
    work = str(tmp_path / "work")
    flags = ("--data-dir", url, "--work-dir", work, "--cluster", cluster.address, "--jobs", "2")
    result = cli("data", *UNIVERSE, *flags)
    assert result.exit_code == 0, result.output
    assert asked(gateway) == in_process
    assert gateway.max_in_flight(GET_RANGE) <= 2  # --jobs across both workers
    after = cluster.tasks_by_worker()
    assert all(after[worker] > before.get(worker, 0) for worker in after), (before, after)
    remote = objects(url, allow_http=True)
    assert remote == objects(str(local))
    assert len([key for key in remote if key.endswith(".dbn.zst")]) == 8


def test_cluster_worker_killed_mid_run_loses_nothing(cluster, gateway, cli, tmp_path):
    """Dask reschedules a lost worker's task: exit 0, every file as an in-process run's."""
    local = tmp_path / "local"
    assert cli("data", *UNIVERSE, "--data-dir", str(local)).exit_code == 0
    gateway.reset()
    gateway.latency_s = 0.25
    pids = cluster.client.run(os.getpid)
    killed: list[str] = []

    def kill_a_busy_worker() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not killed:
            busy = [w for w, keys in cluster.client.processing().items() if keys]
            if busy and gateway.count(GET_RANGE):
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    shared = tmp_path / "cluster"
    try:
        result = cli("data", *UNIVERSE, "--data-dir", str(shared), "--cluster", cluster.address)
    finally:
        killer.join()
        gateway.latency_s = 0.0
    assert killed
    assert result.exit_code == 0, result.output
    assert objects(str(shared)) == objects(str(local))
    cluster.client.wait_for_workers(2, timeout=60)


def test_cluster_workers_without_the_key_exit_3_before_any_request(cluster, gateway, cli, data_dir):
    """The key never travels: workers started without it are named, nothing is billed."""
    cluster.workers_env(DATABENTO_API_KEY=None)
    try:
        result = cli("data", *UNIVERSE, "--cluster", cluster.address)
    finally:
        cluster.workers_env(DATABENTO_API_KEY=cluster.key)
    assert result.exit_code == 3
    assert "DATABENTO_API_KEY is not set on the workers tcp://127.0.0.1" in result.output
    assert gateway.count(GET_RANGE) == 0
    assert cluster.key not in result.output


def test_cluster_other_version_on_a_worker_exits_2(cluster, gateway, cli, data_dir, monkeypatch):
    """Workers must run the client's bento-ingest."""
    monkeypatch.setattr(cluster_engine, "product_version", lambda: "0.0.0-other")
    result = cli("data", *UNIVERSE, "--cluster", cluster.address)
    assert result.exit_code == 2
    assert "runs bento-ingest" in result.output
    assert gateway.count(GET_RANGE) == 0


def test_cluster_task_on_a_worker_that_joined_after_the_check_refuses_another_version(
    gateway, data_dir
):
    """The check runs on the workers present at the start: a task that lands on one that
    joined later checks the version itself, before any request."""
    from tests.test_work import planned

    group, config = planned(data_dir, "stream")
    limits = cluster_engine.Limits("semaphore", 4, 2, "cancel", version="0.0.0-other")
    gateway.reset()
    outcome = cluster_engine.fetch_here(group, config, limits, None, threading.Event())
    assert outcome.exit_code == 2
    assert "runs bento-ingest" in (outcome.error or "")
    assert outcome.results == []
    assert gateway.count(GET_RANGE) == 0


def test_cluster_check_worker_without_the_marker_says_it_cannot_see_the_data_dir(tmp_path):
    """A data dir the worker does not see (the client's marker missing) is its problem."""
    from backend.jobs.core.work import RunConfig

    config = RunConfig(store=StoreLocation(str(tmp_path)), work_dir=tmp_path / "work")
    answer = cluster_engine.check_worker(config, "raw/databento/.locks/cluster-missing")
    assert answer["problem"] == f"cannot see the data dir {tmp_path}"


@pytest.mark.parametrize(
    ("flags", "code", "first"),
    [
        (("--max-cost", "0"), 2, "estimated cost"),
        (("--cluster", "nowhere"), 2, "--cluster 'nowhere' is not a Dask scheduler address"),
        (("--cluster", "local:0"), 2, "--cluster 'local:0' is not a Dask scheduler address"),
    ],
)
def test_cluster_refused_before_any_task(gateway, cli, data_dir, monkeypatch, flags, code, first):
    """Budget and address are checked on the client: no scheduler is reached, nothing billed."""
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", NOBODY)
    result = cli("data", *UNIVERSE, *flags)
    assert result.exit_code == code, result.output
    assert first in result.output
    assert gateway.count(GET_RANGE) == 0


def test_cluster_cached_universe_starts_nothing_and_asks_nothing(gateway, cli, data_dir):
    """A cached universe answers from the cache: no scheduler reached, no request."""
    assert cli("data", *UNIVERSE).exit_code == 0
    gateway.reset()
    result = cli("data", *UNIVERSE, "--cluster", NOBODY)
    assert result.exit_code == 0, result.output
    assert gateway.requests == []


def test_cluster_local_into_a_local_folder(gateway, cli, data_dir, tmp_path):
    """`--cluster local:1` starts worker processes here, fills the folder, stops them."""
    reference = tmp_path / "reference"
    pair = ("--symbols", "AAPL,MSFT", "--year", "2024")
    assert cli("data", *pair, "--data-dir", str(reference)).exit_code == 0
    result = cli("data", *pair, "--cluster", "local:1")
    assert result.exit_code == 0, result.output
    assert objects(str(data_dir)) == objects(str(reference))
    assert cli("verify").exit_code == 0
