"""`make demo-cluster`: a universe on a Dask cluster, offline.

Starts the sandbox gateway (in this process, with six symbols) and the local S3 server, then a
Dask scheduler and two worker processes (`dask scheduler`, `dask worker`), the workers with the
API key, the sandbox's CA and the S3 settings in their own environment. The client runs
`data --cluster tcp://...` for 6 symbols x 2 years into s3://bento-demo/cluster, then `status`
and `verify`. Everything is stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from backend.demo import REPO, run
from backend.sandbox import SandboxGateway
from backend.sandbox.s3server import LocalS3Server

BUCKET, PREFIX = "bento-demo", "cluster"
WORK = REPO / "data" / "demo-cluster-work"
SYMBOLS = "AAPL,MSFT,BRK.B,NEWCO,AMZN,GOOGL"
YEARS = "2023-2024"
EXTRA = {"AMZN": 7001, "GOOGL": 7002}  # the sandbox knows the first four already
STARTUP_TIMEOUT_S = 60


def dask(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    module = "distributed.cli.dask_" + args[0]
    return subprocess.Popen([sys.executable, "-m", module, *args[1:]], cwd=REPO, env=env)


def scheduler_address(path: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit("demo-cluster: the Dask scheduler did not start; see the lines above")
        time.sleep(0.1)
    time.sleep(0.2)  # the file is written whole, but give its writer a moment
    return json.loads(path.read_text())["address"]


@contextlib.contextmanager
def stopped_at_end(processes: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    try:
        yield
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> int:
    sandbox = SandboxGateway(records_per_day=200, available_end=date(2025, 6, 1))
    for symbol, instrument_id in EXTRA.items():
        sandbox.add_symbol(symbol, [(date(2000, 1, 1), date(2100, 1, 1), instrument_id)])
    shutil.rmtree(WORK, ignore_errors=True)
    processes: list[subprocess.Popen[bytes]] = []
    with (
        sandbox,
        LocalS3Server() as s3,
        tempfile.TemporaryDirectory(prefix="dask-") as state,
        stopped_at_end(processes),
    ):
        s3.create_bucket(BUCKET)
        env = {
            **os.environ,
            **s3.env(),
            "REQUESTS_CA_BUNDLE": str(sandbox.ca_path),
            "SSL_CERT_FILE": str(sandbox.ca_path),
            "DATA_DIR": f"s3://{BUCKET}/{PREFIX}",
            "DASK_LOGGING__DISTRIBUTED": "warning",  # the scheduler's and workers' own lines
        }
        env.pop("AWS_PROFILE", None)
        worker_env = {**env, "DATABENTO_API_KEY": "db-demo" + secrets.token_hex(12)}
        scheduler_file = Path(state) / "scheduler.json"
        processes.append(
            dask(
                "scheduler",
                *("--host", "127.0.0.1", "--port", "0", "--no-dashboard"),
                *("--scheduler-file", str(scheduler_file)),
                env=env,
            )
        )
        address = scheduler_address(scheduler_file, processes[0])
        for _ in range(2):
            processes.append(
                dask(
                    "worker",
                    address,
                    *("--host", "127.0.0.1", "--nthreads", "2", "--no-dashboard"),
                    env=worker_env,
                )
            )
        print(f"\nDask scheduler at {address}, two workers; bucket s3://{BUCKET}/{PREFIX}")
        client_env = {**env, "DATABENTO_API_KEY": worker_env["DATABENTO_API_KEY"]}
        universe = ["--symbols", SYMBOLS, "--years", YEARS, "--gateway", sandbox.gateway]
        steps = [
            (
                "6 symbols x 2 years on the cluster",
                ["data", *universe, "--cluster", address, "--work-dir", str(WORK)],
            ),
            ("what the bucket holds", ["status"]),
            ("re-hash against the manifests", ["verify"]),
        ]
        for step, args in steps:
            code = run(step, *args, env=client_env)
            if code:
                print(f"demo-cluster: step '{step}' exited {code}", file=sys.stderr)
                return code
    print("\nDone: scheduler, workers, sandbox and S3 server stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
