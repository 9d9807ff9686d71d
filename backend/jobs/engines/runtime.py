"""What runs around the unit of work in one process: the client, the store, the stop event, the
retry policy and the progress; and the bounded pool that fetches chunks and files.

A run builds one `Runtime` for all its groups (one client, so one pacing of the service's
rates); `open_runtime` builds one from plain `RunConfig` alone, for a group fetched elsewhere.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from backend.jobs.cache.layout import YearFolder
from backend.jobs.client.retry import RetryPolicy
from backend.jobs.core.progress import NullProgress, Progress
from backend.jobs.engines.parts import Downloader

if TYPE_CHECKING:
    from pathlib import Path

    from backend.jobs.client.databento import DatabentoClient
    from backend.jobs.client.jobfiles import JobFile
    from backend.jobs.client.retry import Pacer
    from backend.jobs.core.request import JobRequest
    from backend.jobs.core.work import ProductPlan, RunConfig
    from backend.jobs.store.base import Store


class BatchClient(Protocol):
    def submit_job(self, job: JobRequest, what: str) -> dict[str, Any]: ...
    def job_details(self, job_id: str) -> dict[str, Any]: ...
    def jobs_since(self, since: str) -> list[dict[str, Any]]: ...
    def job_files(self, job_id: str) -> list[JobFile]: ...
    def download_file(self, file: JobFile, path: Path, job_id: str) -> None: ...


class EngineClient(Downloader, BatchClient, Protocol):
    """What both engines ask of Databento."""


@dataclass(frozen=True)
class Runtime:
    """The open objects the engines work with, around the plain config."""

    config: RunConfig
    client: EngineClient
    store: Store
    stop: threading.Event  # set when the run ends early: nothing new starts, waits end
    policy: RetryPolicy
    events: Progress

    def folder(self, dataset: str, member: ProductPlan) -> YearFolder:
        """A member's symbol-year: its objects in the store, its working folder locally."""
        return YearFolder(
            symbol=member.symbol,
            year=member.year,
            dataset=dataset,
            store=self.store,
            work_root=self.config.work_dir,
        )


def open_runtime(
    config: RunConfig,
    stop: threading.Event,
    events: Progress | None = None,
    *,
    pacer: Pacer | None = None,
    gate: Callable[[DatabentoClient], Any] | None = None,
) -> Runtime:
    """A runtime of this process's own, from plain config: the API key read from this
    environment, the client built by its one module, the store opened from its location.

    A cluster worker passes its share of the request rates (`pacer`) and a `gate` that wraps
    the client so every connection counts against the cluster-wide limit."""
    from backend.jobs.client.databento import DatabentoClient
    from backend.jobs.settings import Settings
    from backend.jobs.store import open_store

    settings = Settings.from_env(gateway=config.gateway)
    policy = RetryPolicy(retries=config.retries)
    client = DatabentoClient(
        settings.require_key(),
        settings.gateway_url(),
        timeout_s=config.timeout_s,
        policy=policy,
        stop=stop,
        pacer=pacer,
    )
    store = open_store(config.store)
    gated = client if gate is None else gate(client)
    return Runtime(config, gated, store, stop, policy, events or NullProgress())


@contextlib.contextmanager
def bounded_pool(runtime: Runtime, name: str) -> Iterator[ThreadPoolExecutor]:
    """`--jobs` workers. A failure, Ctrl-C or a signal stops the run: no new task starts, the
    display stops, tasks in flight end (their streams are abandoned), only then does it raise."""
    pool = ThreadPoolExecutor(max_workers=runtime.config.jobs, thread_name_prefix=name)
    try:
        yield pool
    except BaseException:
        runtime.stop.set()
        runtime.events.close()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=False)
