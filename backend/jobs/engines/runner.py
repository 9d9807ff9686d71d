"""The unit of work, `fetch_group`: fetch one group's product for its ranges and publish each
symbol's file, as a function of plain, picklable data (a `GroupPlan` and a `RunConfig`) with
plain results (`ProductResult`s). And `fetch_groups`, which runs a whole run's groups in this
process around one `Runtime`: one client, one bounded pool per engine, one progress.

Locks on the products, progress and the summary stay around both: the caller (ingest) holds
the products' locks, and only the local lock on a batch job's download folder is taken here.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from backend.jobs.core.files import remove_stale_temps
from backend.jobs.engines.batch import collect, submit_jobs
from backend.jobs.engines.runtime import Runtime, open_runtime
from backend.jobs.engines.stream import download

if TYPE_CHECKING:
    from backend.jobs.core.progress import Progress
    from backend.jobs.core.request import ProductResult
    from backend.jobs.core.work import GroupPlan, RunConfig


def fetch_group(
    group: GroupPlan, config: RunConfig, *, events: Progress | None = None
) -> list[ProductResult]:
    """Fetch one group (streamed or as a batch job) and publish each member's file.

    Everything it needs is built here from plain data: the client (the API key read from
    this environment), the store (opened from `config.store`), the pool (`config.jobs`).
    The caller holds the products' locks; `events`, if given, is told the progress.
    """
    stop = threading.Event()
    try:
        return list(fetch_groups([group], open_runtime(config, stop, events)))
    finally:
        stop.set()


def fetch_groups(groups: Sequence[GroupPlan], runtime: Runtime) -> Iterator[ProductResult]:
    """Fetch a run's groups in this process, yielding each product as it is published.

    Batch jobs are submitted first, so the service prepares them while the streamed groups
    download (`--jobs` chunks in flight across all groups); then the jobs' files are fetched.
    """
    for group in groups:
        for member in group.members:
            folder = runtime.folder(group.dataset, member)
            if group.engine == "stream" and len(group.chunks) == 1:
                folder.path.mkdir(parents=True, exist_ok=True)  # its part is its file, beside it
            else:
                remove_stale_temps(folder.make_parts(member.product.name))
    with contextlib.ExitStack() as locks:
        runs = submit_jobs([group for group in groups if group.engine == "batch"], runtime, locks)
        yield from download([group for group in groups if group.engine == "stream"], runtime)
        yield from collect(runs, runtime)
