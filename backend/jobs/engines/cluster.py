"""The unit of work on a Dask cluster: one task per group's product, on the scheduler's workers.

The client (ingest) has decided, locked, planned and budget-checked everything before this
module is imported (Dask is imported only here, only with --cluster). It then checks every
worker once before anything billable (the key in the worker's own environment, the same
bento-ingest, the data dir and work dir visible and writable), and submits `run_group` with
plain data (a `GroupPlan`, a `RunConfig` without the key, `Limits` naming the cluster-wide
semaphore). The client holds the products' locks (leases in a bucket, kernel locks on a shared
disk) for the whole run, as in-process, so another run on the same data dir waits and then
finds the files cached. Results come back as they finish; a task's error comes back as data
(its message and exit code) with the products the task did publish.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from backend.jobs.cache.layout import LOCKS_SUBDIR, RAW_SUBDIR
from backend.jobs.client.retry import Pacer
from backend.jobs.core.progress import OverallProgress, Progress
from backend.jobs.errors import CredentialsError, IngestError, InvalidInputError
from backend.jobs.store import open_store

if TYPE_CHECKING:
    from backend.jobs.client.jobfiles import JobFile
    from backend.jobs.core.request import ProductResult, RangeRequest
    from backend.jobs.core.work import GroupPlan, RunConfig
    from backend.jobs.store.base import Store

WORKERS_TIMEOUT_S = 60.0  # how long a run waits for a first worker to join the scheduler
STOP_POLL_S = 0.5  # how often a task looks whether the client has cancelled the run
WorkerAnswer = dict[str, Any]


@dataclass(frozen=True)
class Limits:
    """Cluster-wide limits, by name: every task shares one semaphore of `connections` leases
    (--jobs streams or files in flight across all workers) and paces `1 / workers` of the
    documented request rates; `cancel` is the Dask event the client sets to stop the run."""

    semaphore: str
    connections: int
    workers: int
    cancel: str
    version: str  # the client's bento-ingest: a worker that joins late is checked by its task


@dataclass(frozen=True)
class TaskOutcome:
    """What a task hands back: the products it published, and the error that stopped it."""

    results: list[ProductResult]
    error: str | None = None
    exit_code: int = 0

    def check(self) -> None:
        """Raise the task's error, once its published products are told."""
        if self.error is not None:
            raise WorkerError(self.error, self.exit_code)


class WorkerError(IngestError):
    """A task's error, as its message and exit code (exceptions do not all pickle)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@functools.cache
def product_version() -> str:
    try:
        return version("bento-ingest")
    except PackageNotFoundError:  # a checkout not installed: its source is its version
        return "unknown"


# On the workers


def check_worker(config: RunConfig, marker: str) -> WorkerAnswer:
    """Run once on every worker before anything billable: nothing in it is a secret."""
    from backend.jobs.settings import API_KEY_ENV

    answer: WorkerAnswer = {
        "key": bool(os.environ.get(API_KEY_ENV, "").strip()),
        "version": product_version(),
        "problem": None,
    }
    try:
        store = open_store(config.store)
        seen = store.read(marker)
        if seen is None:
            answer["problem"] = f"cannot see the data dir {config.store.url}"
            return answer
        probe = f"{marker}.{uuid.uuid4().hex}"
        store.put(probe, b"")
        store.delete(probe)
        config.work_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(config.work_dir, os.W_OK):
            answer["problem"] = f"cannot write the work dir {config.work_dir}"
    except (OSError, IngestError) as exc:
        answer["problem"] = f"cannot use the data dir {config.store.url}: {exc}"
    return answer


class GatedClient:
    """The worker's client, each stream or file download holding a lease of the cluster-wide
    semaphore: --jobs connections to Databento across all workers."""

    def __init__(self, inner: Any, semaphore: Any) -> None:
        self._inner = inner
        self._semaphore = semaphore

    @classmethod
    def around(cls, semaphore: Any) -> Any:
        """What wraps a client in this gate."""
        return lambda inner: cls(inner, semaphore)

    def download(self, request: RangeRequest, path: Path) -> None:
        with self._semaphore:
            self._inner.download(request, path)

    def download_file(self, file: JobFile, path: Path, job_id: str) -> None:
        with self._semaphore:
            self._inner.download_file(file, path, job_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def run_group(group: GroupPlan, config: RunConfig, limits: Limits) -> TaskOutcome:
    """The Dask task: `fetch_group` on this worker, within the cluster's limits, in a thread of
    its own while this one (the task's, where Dask's objects answer) watches the client's
    cancel event: once set, the fetch stops (its streams abandoned, nothing half-published)."""
    from distributed import Event, Semaphore

    stop = threading.Event()
    cancel = Event(limits.cancel)
    semaphore = Semaphore(max_leases=limits.connections, name=limits.semaphore)
    ended: list[TaskOutcome | BaseException] = []

    def fetch() -> None:
        try:
            ended.append(fetch_here(group, config, limits, GatedClient.around(semaphore), stop))
        except BaseException as exc:  # noqa: BLE001  handed to the task's thread, raised there
            ended.append(exc)

    fetcher = threading.Thread(target=fetch, name=f"group-{group.number}", daemon=True)
    fetcher.start()
    while fetcher.is_alive():
        fetcher.join(STOP_POLL_S)
        if not stop.is_set() and cancel.is_set():
            stop.set()
    if isinstance(ended[0], BaseException):
        raise ended[0]
    return ended[0]


def fetch_here(
    group: GroupPlan, config: RunConfig, limits: Limits, gate: Any, stop: threading.Event
) -> TaskOutcome:
    """One group fetched on this worker: its own client (the key from this environment, a
    share of the rates), each connection through `gate`; an error comes back as data."""
    from backend.jobs.engines.runner import fetch_groups
    from backend.jobs.engines.runtime import open_runtime
    from backend.jobs.settings import Settings

    results: list[ProductResult] = []
    if (mine := product_version()) != limits.version:  # a worker that joined after the check
        message = f"a worker runs bento-ingest {mine}, this client {limits.version}"
        fix = "install the same version on every worker"
        return TaskOutcome([], f"{message}: {fix}", InvalidInputError.exit_code)
    try:
        worker_logging(Settings.from_env(gateway=config.gateway))
        pacer = worker_pacer(limits.workers)
        runtime = open_runtime(config, stop, pacer=pacer, gate=gate)
        results.extend(fetch_groups([group], runtime))
    except IngestError as exc:
        return TaskOutcome(results, str(exc) or type(exc).__name__, exc.exit_code)
    finally:
        stop.set()
    return TaskOutcome(results)


_LOGGING: list[bool] = []  # set up once per worker process


@functools.cache
def worker_pacer(workers: int) -> Pacer:
    """One pacer per worker process, shared by the tasks its threads run: each of the
    `workers` paces 1 / workers of the documented rates and batch submits, so the cluster
    stays under them in total however many tasks a worker runs at once."""
    return Pacer(share=1 / workers)


def worker_logging(settings: Any) -> None:
    """The worker's own lines at INFO, its key masked like the client's."""
    from backend.jobs.logs import setup_logging

    if not _LOGGING:
        secret = settings.api_key.reveal() if settings.api_key else ""
        setup_logging("INFO", secrets=[secret])
        _LOGGING.append(True)


# On the client


@contextlib.contextmanager
def connected(address: str) -> Iterator[Any]:
    """A Dask client of the scheduler at `address`, or of a `LocalCluster` started here and
    stopped at the end (`local`: one worker process per core; `local:N`: N)."""
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if address.startswith("local"):
            _, _, count = address.partition(":")
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=int(count) if count else os.cpu_count() or 1,
                    threads_per_worker=2,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=":0",  # a free port: another cluster may hold 8787
                )
            )
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(address, timeout="10s"))
            except OSError as exc:
                raise IngestError(
                    f"--cluster {address}: no Dask scheduler answers ({exc})"
                ) from None
        yield client


def check_workers(client: Any, config: RunConfig, store: Store) -> int:
    """Every worker, once, before anything billable: the key in its environment (else exit 3,
    naming them), this bento-ingest (else 2), the data dir seen and writable (else 2).
    Returns the number of workers."""
    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
    except TimeoutError:
        raise IngestError(
            f"no worker joined the Dask scheduler within {WORKERS_TIMEOUT_S:.0f}s: start workers "
            "(dask worker ADDRESS) with DATABENTO_API_KEY in their environment"
        ) from None
    marker = (Path(RAW_SUBDIR) / LOCKS_SUBDIR / f"cluster-{uuid.uuid4().hex}").as_posix()
    store.put(marker, b"bento-ingest cluster check\n")
    try:
        answers: dict[str, WorkerAnswer] = client.run(check_worker, config, marker)
    finally:
        store.delete(marker)
    ours = product_version()
    keyless = sorted(worker for worker, answer in answers.items() if not answer["key"])
    if keyless:
        raise CredentialsError(
            f"DATABENTO_API_KEY is not set on the workers {', '.join(keyless)}: start them "
            "with the key in their environment (it never travels with the tasks)"
        )
    for worker, answer in sorted(answers.items()):
        if answer["version"] != ours:
            raise InvalidInputError(
                f"worker {worker} runs bento-ingest {answer['version']}, this client {ours}: "
                "install the same version on every worker"
            )
        if answer["problem"]:
            raise InvalidInputError(
                f"worker {worker} {answer['problem']}: use a --data-dir every worker sees "
                "(s3://BUCKET/PREFIX or a shared folder) and a --work-dir they can write"
            )
    return len(answers)


def fetch_on_cluster(
    address: str,
    groups: list[GroupPlan],
    config: RunConfig,
    store: Store,
    progress: Progress,
) -> Iterator[ProductResult]:
    """Each group's product as a task on the cluster's workers, yielding its products as the
    tasks finish (one bar: parts done of parts planned). Ctrl-C, a signal or a task's error
    cancels the rest: running tasks see the cancel event and stop their streams."""
    from distributed import Event, as_completed

    with connected(address) as client:
        workers = check_workers(client, config, store)
        token = uuid.uuid4().hex
        cancel = Event(f"bento-ingest-cancel-{token}")
        limits = Limits(
            f"bento-ingest-{token}", config.jobs, workers, cancel.name, product_version()
        )
        logger.info("{} tasks on {} workers of {}", len(groups), workers, client.scheduler.address)
        futures = [
            client.submit(run_group, group, config, limits, pure=False, key=f"group-{token}-{n}")
            for n, group in enumerate(groups)
        ]
        sizes = [len(group.chunks) * len(group.members) for group in groups]
        parts = {future.key: size for future, size in zip(futures, sizes, strict=True)}
        bar = OverallProgress(progress, sum(parts.values()))
        try:
            for future in as_completed(futures):
                outcome: TaskOutcome = future.result()
                told(bar, parts[future.key], outcome.results)
                yield from outcome.results
                outcome.check()
        except BaseException:
            cancel.set()
            client.cancel(futures)
            raise


def told(bar: OverallProgress, parts: int, results: list[ProductResult]) -> None:
    """A finished task on the one bar: its parts done, its bytes."""
    bar.start(OverallProgress.LABEL, parts)
    size = sum(result.bytes for result in results)
    for n in range(parts):
        bar.advance(OverallProgress.LABEL, size if n == 0 else 0)
