"""The download engine: chunks of every product on one bounded pool, merged as they land."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

from backend.jobs.cache import ScratchFiles, YearFolder
from backend.jobs.chunks import Part, fetch_chunk
from backend.jobs.client import DatabentoClient, RangeRequest
from backend.jobs.decision import CacheKey
from backend.jobs.errors import DISK_FULL_ERRNOS, DiskFullError, IngestError
from backend.jobs.manifest import Manifest, product_entry
from backend.jobs.merge import MergedWriter
from backend.jobs.preflight import ProductPlan
from backend.jobs.progress import Progress
from backend.jobs.request import IngestRequest, ProductResult
from backend.jobs.retry import RetryPolicy


def download(
    request: IngestRequest,
    *,
    client: DatabentoClient,
    folder: YearFolder,
    manifest: Manifest,
    plans: list[ProductPlan],
    progress: Progress,
    policy: RetryPolicy,
    stop: threading.Event,
) -> Iterator[ProductResult]:
    """Fetch all chunks of all products on one bounded pool, merging each product as it goes.

    Workers download, check and re-encode parts; this thread appends their records, in order,
    to the product's final file, so little is left to do when the last chunk lands.
    """
    if not plans:
        return
    scratch = ScratchFiles()
    started = time.monotonic()
    writers: dict[str, MergedWriter] = {}
    pool = ThreadPoolExecutor(max_workers=request.jobs, thread_name_prefix="chunk")
    try:
        chunk_jobs: dict[Future[Part], ProductPlan] = {}
        for plan in plans:
            product, chunks = plan.product, plan.chunks
            parts_dir = folder.parts(product.name)
            whole = RangeRequest(request.dataset, (request.symbol,), product.schema, plan.span)
            final = folder.final(product.name)
            writers[product.name] = MergedWriter(final, whole, chunks, plan.header, scratch)
            progress.start(product.name, parts_dir, len(chunks))
            for index, span in enumerate(chunks, start=1):
                label = (
                    f"{request.symbol} {request.year} {product.name} "
                    f"chunk {index}/{len(chunks)} {span}"
                )
                chunk_request = RangeRequest(
                    request.dataset, (request.symbol,), product.schema, span
                )
                as_served = chunks == [plan.span]
                job = pool.submit(
                    stopping_on_failure,
                    client=client,
                    request=chunk_request,
                    record_size=product.record_size,
                    parts_dir=parts_dir,
                    scratch=scratch,
                    policy=policy,
                    stop=stop,
                    label=label,
                    as_served=as_served,
                    empty_header=None if as_served else plan.header.clipped(span),
                )
                chunk_jobs[job] = plan
        for job in as_completed(chunk_jobs):
            plan = chunk_jobs[job]
            writer = writers[plan.product.name]
            try:
                part = job.result()
                writer.add(part)
                progress.advance(plan.product.name, part.summary.bytes)
                if len(writer.parts) < len(plan.chunks):
                    continue
                result = finish_product(
                    request,
                    folder=folder,
                    manifest=manifest,
                    plan=plan,
                    writer=writer,
                    started=started,
                )
            except (DiskFullError, OSError) as exc:
                raise disk_full(exc, plan, folder) from None
            progress.finish(plan.product.name)
            yield result
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


def stopping_on_failure(**chunk: Any) -> Part:
    """fetch_chunk, but a chunk that fails stops the run before its worker takes the next one."""
    try:
        return fetch_chunk(**chunk)
    except BaseException:
        chunk["stop"].set()
        raise


def disk_full(exc: DiskFullError | OSError, plan: ProductPlan, folder: YearFolder) -> BaseException:
    """Say which disk filled and how much room the product needs; other OS errors pass."""
    if isinstance(exc, OSError) and exc.errno not in DISK_FULL_ERRNOS:
        return exc
    reason = exc.strerror if isinstance(exc, OSError) else str(exc)
    need_mb = 2 * plan.estimated_bytes / 1e6  # parts, then the merged copy beside them
    return IngestError(
        f"disk full while writing {plan.product.name} under {folder.path} ({reason}): "
        f"it needs up to {need_mb:,.0f} MB free there (parts plus the merged file); "
        "free some space or choose another --data-dir, then run again to resume"
    )


def finish_product(
    request: IngestRequest,
    *,
    folder: YearFolder,
    manifest: Manifest,
    plan: ProductPlan,
    writer: MergedWriter,
    started: float,
) -> ProductResult:
    """Publish the merged file, record it in the manifest, then drop the parts."""
    product = plan.product
    parts = writer.parts
    merged = writer.finish()
    key = CacheKey(request.dataset, product.schema, request.symbol, request.year)
    recorded = key.recorded(plan.span, request.chunking)
    manifest.record(
        product.name, product_entry(merged.path, request=recorded, merged=merged, parts=parts)
    )
    folder.drop_parts(product.name)
    reused = sum(not part.downloaded for part in parts)
    return ProductResult(
        product,
        "downloaded",
        merged.bytes,
        merged.records,
        time.monotonic() - started,
        extra={"chunks": len(parts), "reused_chunks": reused},
    )
