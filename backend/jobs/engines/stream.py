"""The download engine: chunks of every product on one bounded pool, merged as they land."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

from backend.jobs.cache.decision import CacheKey
from backend.jobs.cache.layout import ScratchFiles, YearFolder
from backend.jobs.cache.manifest import BatchRecord, Manifest, product_entry
from backend.jobs.cli.progress import Progress
from backend.jobs.client.databento import DatabentoClient
from backend.jobs.client.retry import RetryPolicy
from backend.jobs.core.ranges import TimeRange
from backend.jobs.core.request import IngestRequest, ProductResult, RangeRequest
from backend.jobs.engines.merge import MergedWriter
from backend.jobs.engines.parts import Part, fetch_chunk, fetch_group_chunk
from backend.jobs.errors import DISK_FULL_ERRNOS, DiskFullError, IngestError
from backend.jobs.plan.preflight import GroupPlan, ProductPlan

T = TypeVar("T")


def download(
    request: IngestRequest,
    *,
    client: DatabentoClient,
    groups: list[GroupPlan],
    progress: Progress,
    policy: RetryPolicy,
    stop: threading.Event,
) -> Iterator[ProductResult]:
    """Fetch every chunk of every group on one bounded pool, merging each product as it goes.

    Workers download, check (and split, for a group of symbols) and re-encode parts; this
    thread appends their records, in order, to each symbol-year-product's final file, so
    little is left to do when the last chunk lands.
    """
    if not groups:
        return
    scratch = ScratchFiles()
    started = time.monotonic()
    writers: dict[tuple[YearFolder, str], MergedWriter] = {}
    pool = ThreadPoolExecutor(max_workers=request.jobs, thread_name_prefix="chunk")
    try:
        chunk_jobs: dict[Future[dict[str, Part]], GroupPlan] = {}
        for group in groups:
            for member in group.members:
                final = member.folder.final(member.product.name)
                whole = RangeRequest(
                    request.dataset, (member.symbol,), member.product.schema, member.span
                )
                writers[key(member)] = MergedWriter(
                    final,
                    whole,
                    group.chunks,
                    member.header,
                    scratch,
                    destination=(
                        member.folder.storage,
                        member.folder.final_key(member.product.name),
                    ),
                )
                parts_dir = member.folder.parts(member.product.name)
                progress.start(member.product.name, parts_dir, len(group.chunks))
            for index, span in enumerate(group.chunks, start=1):
                job = pool.submit(
                    stopping_on_failure,
                    fetch_group,
                    request,
                    client,
                    group,
                    index,
                    span,
                    scratch=scratch,
                    policy=policy,
                    stop=stop,
                )
                chunk_jobs[job] = group
        for job in as_completed(chunk_jobs):
            group = chunk_jobs[job]
            try:
                parts = job.result()
                for member in group.members:
                    writer = writers[key(member)]
                    writer.add(parts[member.symbol])
                    progress.advance(member.product.name, parts[member.symbol].summary.bytes)
                    if len(writer.parts) < len(group.chunks):
                        continue
                    result = finish_product(request, member=member, writer=writer, started=started)
                    progress.finish(member.product.name)
                    yield result
            except (DiskFullError, OSError) as exc:
                raise disk_full(exc, group) from None
    except BaseException:
        # A failed chunk, Ctrl-C or a signal: no new chunk starts, chunks in flight stop
        # (their streams are abandoned), and only then are the temp files removed.
        stop.set()
        progress.close()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        progress.close()
        pool.shutdown(wait=False)
        for writer in writers.values():
            writer.discard()
        scratch.remove_all()


def key(member: ProductPlan) -> tuple[YearFolder, str]:
    return (member.folder, member.product.name)


def fetch_group(
    request: IngestRequest,
    client: DatabentoClient,
    group: GroupPlan,
    index: int,
    span: TimeRange,
    **engine: Any,
) -> dict[str, Part]:
    """One chunk of a group: a single-symbol request as before, or one split for many symbols."""
    product, total = group.product, len(group.chunks)
    if len(group.members) == 1:
        member = group.members[0]
        whole = group.chunks == [member.span]  # no data in the one request: nothing to fill in
        part = fetch_chunk(
            client=client,
            request=RangeRequest(request.dataset, (member.symbol,), product.schema, span),
            record_size=product.record_size,
            parts_dir=member.folder.parts(product.name),
            label=f"{member.symbol} {member.year} {product.name} chunk {index}/{total} {span}",
            empty_header=None if whole else member.header.clipped(span),
            **engine,
        )
        return {member.symbol: part}
    return fetch_group_chunk(
        client=client,
        request=RangeRequest(request.dataset, group.symbols, product.schema, span),
        record_size=product.record_size,
        parts_dirs={m.symbol: m.folder.parts(product.name) for m in group.members},
        empty_headers={m.symbol: m.header.clipped(span) for m in group.members},
        label=(
            f"{product.name} group {group.number} ({len(group.members)} symbols, "
            f"{group.members[0].year}) chunk {index}/{total} {span}"
        ),
        **engine,
    )


def stopping_on_failure(fetch: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fetch`, but a chunk that fails stops the run before its worker takes the next one."""
    try:
        return fetch(*args, **kwargs)
    except BaseException:
        kwargs["stop"].set()
        raise


def disk_full(exc: DiskFullError | OSError, group: GroupPlan) -> BaseException:
    """Say which disk filled and how much room the products need; other OS errors pass."""
    if isinstance(exc, OSError) and exc.errno not in DISK_FULL_ERRNOS:
        return exc
    reason = exc.strerror if isinstance(exc, OSError) else str(exc)
    need_mb = 2 * group.estimated_bytes / 1e6  # parts, then the merged copy beside them
    first = group.members[0]
    where = first.folder.path if len(group.members) == 1 else first.folder.data_dir
    what = group.product.name if len(group.members) == 1 else f"{group.product.name} group"
    return IngestError(
        f"disk full while writing {what} under {where} ({reason}): "
        f"it needs up to {need_mb:,.0f} MB free there (parts plus the merged files); "
        "free some space or choose another --data-dir, then run again to resume"
    )


def finish_product(
    request: IngestRequest,
    *,
    member: ProductPlan,
    writer: MergedWriter,
    started: float,
    batch: BatchRecord | None = None,
) -> ProductResult:
    """Publish the merged file, record it in the manifest, then drop the parts."""
    product, folder = member.product, member.folder
    parts = writer.parts
    merged = writer.finish()
    key = CacheKey(request.dataset, product.schema, member.symbol, member.year)
    recorded = key.recorded(member.span, request.chunking)
    entry = product_entry(
        merged.path,
        request=recorded,
        merged=merged,
        parts=parts,
        engine="batch" if batch else "stream",
        batch=batch,
    )
    Manifest.of(folder).record(product.name, entry)
    folder.drop_parts(product.name)
    reused = sum(not part.downloaded for part in parts)
    return ProductResult(
        member.symbol,
        member.year,
        product,
        "downloaded",
        merged.bytes,
        merged.records,
        time.monotonic() - started,
        extra={
            "chunks": len(parts),
            "reused_chunks": reused,
            **({"engine": "batch", "job_id": batch.job_id} if batch else {}),
        },
    )
