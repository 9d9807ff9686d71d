"""The stream engine: every chunk of every group on one bounded pool (`get_range` per chunk),
each product's file merged as its chunks land, then published by the shared tail."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, as_completed
from typing import TYPE_CHECKING

from backend.jobs.core.files import ScratchFiles
from backend.jobs.core.request import ProductResult, RangeRequest
from backend.jobs.engines.merge import MergedWriter
from backend.jobs.engines.parts import Part, PartPlace, fetch_chunk, fetch_group_chunk
from backend.jobs.engines.publish import finish_product, merged_writer
from backend.jobs.engines.runtime import Runtime, bounded_pool
from backend.jobs.errors import DISK_FULL_ERRNOS, DiskFullError, IngestError

if TYPE_CHECKING:
    from backend.jobs.core.ranges import TimeRange
    from backend.jobs.core.work import GroupPlan, ProductPlan

Writers = dict[tuple[str, int, str], MergedWriter]  # by ProductPlan.identity


def download(groups: Sequence[GroupPlan], runtime: Runtime) -> Iterator[ProductResult]:
    """Fetch every chunk of every group on one bounded pool, merging each product as it goes.

    Workers download, check (and split, for a group of symbols) and re-encode parts; this
    thread appends their records, in order, to each symbol-year-product's final file, so
    little is left to do when the last chunk lands.
    """
    if not groups:
        return
    scratch = ScratchFiles()
    started = time.monotonic()
    writers: Writers = {}
    try:
        with bounded_pool(runtime, "chunk") as pool:
            landing: dict[Future[dict[str, Part]], GroupPlan] = {}
            for group in groups:
                writers.update(start_products(runtime, group, scratch))
                for index, span in enumerate(group.chunks, start=1):
                    chunk = pool.submit(fetch_one_chunk, runtime, group, index, span, scratch)
                    landing[chunk] = group
            for chunk in as_completed(landing):
                yield from landed(runtime, landing[chunk], chunk, writers, started)
    finally:
        for writer in writers.values():
            writer.discard()
        scratch.remove_all()


def start_products(runtime: Runtime, group: GroupPlan, scratch: ScratchFiles) -> Writers:
    """Each member's file, ready to take its chunks, and its progress started."""
    writers = {}
    for member in group.members:
        writers[member.identity] = merged_writer(runtime, group, member, scratch)
        runtime.events.start(member.product.name, len(group.chunks))
    return writers


def landed(
    runtime: Runtime,
    group: GroupPlan,
    chunk: Future[dict[str, Part]],
    writers: Writers,
    started: float,
) -> Iterator[ProductResult]:
    """A chunk finished: each member's part appended to its file; each file complete is
    published."""
    try:
        parts = chunk.result()
        for member in group.members:
            writer = writers[member.identity]
            writer.add(parts[member.symbol])
            runtime.events.advance(member.product.name, parts[member.symbol].summary.bytes)
            if len(writer.parts) < len(group.chunks):
                continue
            result = finish_product(runtime, group, member, writer, started=started)
            runtime.events.finish(member.product.name)
            yield result
    except (DiskFullError, OSError) as exc:
        raise disk_full(exc, runtime, group) from None


def fetch_one_chunk(
    runtime: Runtime, group: GroupPlan, index: int, span: TimeRange, scratch: ScratchFiles
) -> dict[str, Part]:
    """One chunk of a group: a single-symbol request, or one split for many symbols. A chunk
    that fails stops the run before its worker takes the next one."""
    try:
        return fetch_group_part(runtime, group, index, span, scratch)
    except BaseException:
        runtime.stop.set()
        raise


def fetch_group_part(
    runtime: Runtime, group: GroupPlan, index: int, span: TimeRange, scratch: ScratchFiles
) -> dict[str, Part]:
    product, total = group.product, len(group.chunks)
    engine = {
        "scratch": scratch,
        "policy": runtime.policy,
        "stop": runtime.stop,
        "received": functools.partial(runtime.events.received, product.name),  # bytes arriving
    }

    def place(member: ProductPlan) -> PartPlace:
        folder = runtime.folder(group.dataset, member)
        return PartPlace.of(folder, product.name, span, len(group.chunks))

    if len(group.members) == 1:
        member = group.members[0]
        whole = group.chunks == (member.span,)  # no data in the one request: nothing to fill in
        part = fetch_chunk(
            client=runtime.client,
            request=RangeRequest(group.dataset, (member.symbol,), product.schema, span),
            record_size=product.record_size,
            place=place(member),
            label=f"{member.symbol} {member.year} {product.name} chunk {index}/{total} {span}",
            empty_header=None if whole else member.header.clipped(span),
            **engine,
        )
        return {member.symbol: part}
    return fetch_group_chunk(
        client=runtime.client,
        request=RangeRequest(group.dataset, group.symbols, product.schema, span),
        record_size=product.record_size,
        places={m.symbol: place(m) for m in group.members},
        empty_headers={m.symbol: m.header.clipped(span) for m in group.members},
        label=(
            f"{product.name} group {group.number} ({len(group.members)} symbols, "
            f"{group.year}) chunk {index}/{total} {span}"
        ),
        **engine,
    )


def disk_full(exc: DiskFullError | OSError, runtime: Runtime, group: GroupPlan) -> BaseException:
    """Say which disk filled and how much room the products need; other OS errors pass."""
    if isinstance(exc, OSError) and exc.errno not in DISK_FULL_ERRNOS:
        return exc
    reason = exc.strerror if isinstance(exc, OSError) else str(exc)
    need_mb = 2 * group.estimated_bytes / 1e6  # parts, then the merged copy beside them
    single = len(group.members) == 1
    where = runtime.folder(group.dataset, group.members[0]).path if single else None
    what = group.product.name if single else f"{group.product.name} group"
    return IngestError(
        f"disk full while writing {what} under {where or runtime.config.work_dir} ({reason}): "
        f"it needs up to {need_mb:,.0f} MB free there (parts plus the merged files); "
        "free some space or choose another --data-dir, then run again to resume"
    )
