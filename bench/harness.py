"""Processes: the sandbox gateway in its own process, and measured commands in theirs.

Each measured command is reaped with `os.wait4(pid)`, whose rusage is that one child's own
(ru_maxrss = its peak RSS; a max over it and any children it waited for itself). Unlike
RUSAGE_CHILDREN deltas, it is not a max over every child this process ever had, so the
server or an earlier, bigger run cannot leak into a later measurement. It does start at this
(bench) process's own peak RSS, though: Linux carries the parent's high-water mark over fork
and exec. So the bench keeps its own memory small (files are compared streaming, never read
whole), below the ~150 MB of any measured command.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
API_KEY = "db-bench-key"
RUN_TIMEOUT_S = 1800.0
OWN_CPU_POLL_S = 0.01
SERVER_START_TIMEOUT_S = 60.0
PREWARM_START_TIMEOUT_S = 600.0  # bench.universe_sandbox builds its days before serving


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Measurement:
    wall_s: float
    peak_rss_mb: float  # 10**6 bytes
    cpu_s: float = 0.0  # user + system CPU of the command and the processes it waited for
    own_cpu_s: float = 0.0  # of the command's process alone (not a LocalCluster's workers)

    def as_json(self) -> dict[str, float]:
        return {key: round(value, 4) for key, value in asdict(self).items()}


def measure(argv: Sequence[str], *, env: dict[str, str], log: Path) -> Measurement:
    """Run argv to completion, output appended to `log`; its wall time and its own peak RSS."""
    run = run_watched(argv, env=env, log=log)
    if run.exit_code != 0:
        raise BenchError(f"{' '.join(argv[1:5])} ... exited {run.exit_code}; see {log}")
    return Measurement(run.wall_s, run.peak_rss_mb, run.cpu_s, run.own_cpu_s)


@dataclass(frozen=True)
class Finished:
    """How a watched command ended: its exit code (-9 when killed), wall time, peak RSS, CPU."""

    exit_code: int
    killed: bool
    wall_s: float
    peak_rss_mb: float
    cpu_s: float = 0.0
    own_cpu_s: float = 0.0  # sampled every OWN_CPU_POLL_S: up to that much of the end is missed


def run_watched(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    log: Path,
    kill_when: Callable[[], bool] | None = None,
    poll_s: float = 0.02,
) -> Finished:
    """Run argv, output appended to `log`, to its end, or SIGKILL it as soon as `kill_when()`
    holds (polled every `poll_s`); a failure is reported, not raised.

    Without `kill_when` the wait blocks (wall time to the microsecond); a watchdog kills a
    command still running after RUN_TIMEOUT_S either way.
    """
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        watchdog = threading.Timer(RUN_TIMEOUT_S, proc.kill)
        watchdog.start()
        own_cpu = OwnCpu(proc.pid)
        killed = False
        try:
            while True:
                # wait4, not Popen.wait: its rusage is this child's own peak RSS
                pid, status, usage = os.wait4(proc.pid, 0 if kill_when is None else os.WNOHANG)
                if pid:
                    break
                if not killed and kill_when is not None and kill_when():
                    proc.kill()
                    killed = True
                time.sleep(poll_s)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            watchdog.cancel()
            own_cpu.stop()
        wall = time.perf_counter() - started
        if killed:
            out.write(b"[bench: killed with SIGKILL]\n")
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen consistent
    rss_mb = usage.ru_maxrss * 1024 / 1e6  # KiB on Linux
    cpu = usage.ru_utime + usage.ru_stime
    return Finished(proc.returncode, killed, wall, rss_mb, cpu, own_cpu.seconds)


class OwnCpu:
    """The user + system CPU of one process alone (its children excluded), sampled from a
    thread until `stop()`: wait4 adds every descendant it reaped, a LocalCluster's workers too."""

    def __init__(self, pid: int) -> None:
        self.seconds = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(pid,), daemon=True)
        self._thread.start()

    def _sample(self, pid: int) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            while not self._done.wait(OWN_CPU_POLL_S):
                times = process.cpu_times()
                self.seconds = times.user + times.system

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def median_of(runs: list[Measurement]) -> Measurement:
    return Measurement(
        statistics.median(run.wall_s for run in runs),
        statistics.median(run.peak_rss_mb for run in runs),
        statistics.median(run.cpu_s for run in runs),
        statistics.median(run.own_cpu_s for run in runs),
    )


@dataclass(frozen=True)
class Gateway:
    address: str  # 127.0.0.1:PORT
    ca_path: Path

    def env(self) -> dict[str, str]:
        """What a user of our CLI or of the SDK sets to reach the sandbox.

        Bytecode is cached as on a user's machine (this workplace sets PYTHONDONTWRITEBYTECODE).
        """
        dropped = {"DATA_DIR", "DATABENTO_ENGINE", "DATABENTO_MAX_COST", "PYTHONDONTWRITEBYTECODE"}
        env = {key: value for key, value in os.environ.items() if key not in dropped}
        env.update(
            DATABENTO_API_KEY=API_KEY,
            DATABENTO_GATEWAY=self.address,
            REQUESTS_CA_BUNDLE=str(self.ca_path),
            SSL_CERT_FILE=str(self.ca_path),
            NO_COLOR="1",
        )
        return env


@contextlib.contextmanager
def sandbox(
    state_dir: Path,
    *,
    records_per_day: int,
    throttle_bytes_per_s: int | None = None,
    available_end: str = "2025-01-01",
    prebuilt: str | None = None,
    batch_processing_s: float | None = None,
) -> Iterator[Gateway]:
    """A fresh sandbox gateway process (`python -m backend.sandbox serve`) until the block ends.

    `prebuilt` ("DATASET/SYMBOL/SCHEMA/YEAR") compresses that year into day frames before
    serving, so the stand-in spends no CPU per request: a model of a remote server, whose
    work does not compete with the client on this 2-core machine. `batch_processing_s`: a
    batch job is done that long after its submission, once its files are written.

    While it serves, state_dir/batch-jobs.json holds its batch jobs and their files
    (`sandbox_batch_jobs`); when the block ends, state_dir/requests.json and
    requests-log.json hold its requests (`server_requests`, `server_request_log`).
    """
    state_dir.mkdir(parents=True)
    argv = [
        PYTHON,
        "-m",
        "backend.sandbox",
        "serve",
        "--state-dir",
        str(state_dir),
        "--port",
        "0",
        "--records-per-day",
        str(records_per_day),
        "--available-end",
        available_end,
    ]
    if throttle_bytes_per_s:
        argv += ["--throttle-bytes-per-s", str(throttle_bytes_per_s)]
    if prebuilt:
        argv += ["--frames", "per_day", "--frame-cache-mb", "8192", "--prewarm", prebuilt]
    if batch_processing_s:
        argv += ["--batch-processing-s", str(batch_processing_s)]
    with _server(argv, state_dir) as gateway:
        yield gateway


@contextlib.contextmanager
def universe_sandbox(
    state_dir: Path,
    *,
    symbols: int,
    records_per_day: int,
    throttle_bytes_per_s: int | None,
    latency_s: float,
    prewarm_years: Sequence[int] = (),
    prewarm_schemas: str = "trades,tbbo",
) -> Iterator[Gateway]:
    """The sandbox with SYM000 ... SYM{symbols-1} (`python -m bench.universe_sandbox`).

    When the block ends, state_dir/requests.json holds its requests per endpoint
    (`server_requests`).
    """
    state_dir.mkdir(parents=True)
    argv = [PYTHON, "-m", "bench.universe_sandbox", "--state-dir", str(state_dir)]
    argv += ["--symbols", str(symbols), "--records-per-day", str(records_per_day)]
    argv += ["--latency-s", str(latency_s), "--available-end", "2025-01-01"]
    if throttle_bytes_per_s:
        argv += ["--throttle-bytes-per-s", str(throttle_bytes_per_s)]
    for year in prewarm_years:
        argv += ["--prewarm-year", str(year)]
    argv += ["--prewarm-schemas", prewarm_schemas]
    with _server(argv, state_dir, start_timeout_s=PREWARM_START_TIMEOUT_S) as gateway:
        yield gateway


def server_requests(state_dir: Path) -> dict[str, int]:
    """Requests per endpoint a stopped `universe_sandbox` received."""
    path = state_dir / "requests.json"
    if not path.exists():
        raise BenchError(f"the sandbox wrote no request counts; see {state_dir / 'server.log'}")
    return json.loads(path.read_text())


def server_request_log(state_dir: Path) -> list[dict[str, Any]]:
    """Every request a stopped sandbox received, in order: method, endpoint, params and
    at_ns (arrival, time.time_ns() of that machine)."""
    path = state_dir / "requests-log.json"
    if not path.exists():
        raise BenchError(f"the sandbox wrote no request log; see {state_dir / 'server.log'}")
    return json.loads(path.read_text())


def sandbox_batch_jobs(state_dir: Path) -> list[dict[str, Any]]:
    """The sandbox's batch jobs as of now (or of its stop): each job object with its "files"
    (filename, size, sha256, data), None while they are being written; [] before any job."""
    path = state_dir / "batch-jobs.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())


@contextlib.contextmanager
def _server(
    argv: list[str], state_dir: Path, *, start_timeout_s: float = SERVER_START_TIMEOUT_S
) -> Iterator[Gateway]:
    """Run a sandbox server process until the block ends (SIGTERM, then SIGKILL after 15 s)."""
    with _serving(argv, state_dir, "gateway", start_timeout_s) as (_, address):
        yield Gateway(address.strip(), state_dir / "ca.pem")


@contextlib.contextmanager
def _serving(
    argv: list[str], state_dir: Path, ready_file: str, start_timeout_s: float
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run a server process (output to state_dir/server.log) until the block ends (SIGTERM,
    then SIGKILL after 15 s); yields it and the text of state_dir/ready_file, which it writes
    atomically once it serves."""
    log = state_dir / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        ready = state_dir / ready_file  # written last, atomically
        deadline = time.monotonic() + start_timeout_s
        while not ready.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{' '.join(argv[1:4])} did not start; see {log}")
            time.sleep(0.05)
        yield server, ready.read_text()
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


S3_REQUESTS_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class S3Server:
    """The local S3 server process (`python -m bench.s3_server serve`) and its bucket."""

    bucket: str
    state_dir: Path
    aws: dict[str, str]  # the standard AWS variables that reach it
    pid: int

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` (e.g. Gateway.env()) with the AWS configuration of this server only."""
        dropped = {"AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"}
        return {key: value for key, value in base.items() if key not in dropped} | self.aws

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def requests(self) -> list[dict[str, Any]]:
        """Every request it received so far, in order (method, bucket, key, query, reads_body,
        at_ns: arrival, done_ns: answer ready): it writes them on SIGUSR1; waits for a dump
        written after the signal."""
        path = self.state_dir / "s3-requests.json"
        asked = time.time_ns()
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + S3_REQUESTS_TIMEOUT_S
        while time.monotonic() < deadline:
            if path.exists():
                dump = json.loads(path.read_text())
                if dump["as_of_ns"] >= asked:
                    return dump["requests"]
            time.sleep(0.05)
        raise BenchError(f"the S3 server wrote no request log; see {self.state_dir}/server.log")

    def same_object(self, key: str, file: Path) -> dict[str, Any]:
        """Whether object `key` equals `file` byte for byte, compared in another process
        (boto3, streamed in blocks): equal, object_bytes, file_bytes, first_difference."""
        argv = [PYTHON, "-m", "bench.s3_server", "same", "--bucket", self.bucket]
        argv += ["--key", key, "--file", str(file)]
        env = self.env(dict(os.environ))
        done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"comparing s3://{self.bucket}/{key} failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout)


@contextlib.contextmanager
def s3_server(state_dir: Path, *, bucket: str) -> Iterator[S3Server]:
    """A fresh local S3 server process with `bucket` created, until the block ends."""
    state_dir.mkdir(parents=True)
    argv = [PYTHON, "-m", "bench.s3_server", "serve", "--state-dir", str(state_dir)]
    argv += ["--bucket", bucket]
    with _serving(argv, state_dir, "s3.json", SERVER_START_TIMEOUT_S) as (server, ready):
        yield S3Server(bucket, state_dir, json.loads(ready), server.pid)


def ours_argv(
    data_dir: Path | str,
    *,
    force: bool,
    engine: str | None = None,
    jobs: int | None = None,
    work_dir: Path | None = None,
) -> list[str]:
    """Our CLI on the AAPL 2023 trades; `data_dir` a folder or an s3:// URL (a str: a Path
    would fold its `//`), `work_dir` the local scratch of a bucket's run."""
    argv = [PYTHON, "-m", "backend.jobs.cli", "data", "--symbol", "AAPL", "--year", "2023"]
    argv += ["--products", "trades", "--data-dir", str(data_dir)]
    if work_dir is not None:
        argv += ["--work-dir", str(work_dir)]
    if engine is not None:
        argv += ["--engine", engine]
    if jobs is not None:
        argv += ["--jobs", str(jobs)]
    return [*argv, "--force"] if force else argv


def plain_argv(out: Path) -> list[str]:
    return [PYTHON, "-m", "bench.plain_sdk", "--out", str(out)]


def import_argv() -> list[str]:
    return [PYTHON, "-c", "import typer, loguru"]


def universe_argv(
    data_dir: Path, symbols: Sequence[str] | Path, *, products: str, year: int
) -> list[str]:
    """Our universe command: --symbols A,B,... (or --symbols-file PATH), one --year."""
    argv = [PYTHON, "-m", "backend.jobs.cli", "data"]
    if isinstance(symbols, Path):
        argv += ["--symbols-file", str(symbols)]
    else:
        argv += ["--symbols", ",".join(symbols)]
    return [*argv, "--year", str(year), "--products", products, "--data-dir", str(data_dir)]


def single_argv(data_dir: Path, symbol: str, *, products: str, year: int) -> list[str]:
    """Our single-symbol command, as run once per symbol before the universe existed."""
    argv = [PYTHON, "-m", "backend.jobs.cli", "data", "--symbol", symbol, "--year", str(year)]
    return [*argv, "--products", products, "--data-dir", str(data_dir)]


def loop_argv(out_dir: Path, symbols: Sequence[str], *, schemas: str, year: int) -> list[str]:
    """The loop by hand: one plain get_range(path=) per symbol-year-product, in sequence."""
    argv = [PYTHON, "-m", "bench.plain_sdk", "--out-dir", str(out_dir)]
    return [*argv, "--symbols", ",".join(symbols), "--years", str(year), "--schemas", schemas]
