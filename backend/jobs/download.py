"""The download engine: chunks of every product on one bounded pool, merged as they land."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed

from filelock import FileLock, Timeout
from loguru import logger

from backend.jobs.cache import ScratchFiles, YearFolder
from backend.jobs.chunks import Part, RetryPolicy, fetch_chunk
from backend.jobs.client import DatabentoClient, RangeRequest
from backend.jobs.errors import IngestError
from backend.jobs.manifest import Manifest, product_entry
from backend.jobs.merge import MergedWriter
from backend.jobs.plan import Product
from backend.jobs.preflight import ProductPlan
from backend.jobs.progress import Progress
from backend.jobs.request import IngestRequest, ProductResult


@contextlib.contextmanager
def locked(folder: YearFolder, products: list[Product], timeout_s: float) -> Iterator[None]:
    """One writer per symbol-year-product; kernel locks vanish with a dead process."""
    with contextlib.ExitStack() as stack:
        for product in products:
            lock = FileLock(folder.lock(product.name))
            try:
                stack.enter_context(lock.acquire(timeout=0))
            except Timeout:
                logger.info(
                    "another run is ingesting {} {} {}; waiting up to {:.0f}s for it",
                    folder.symbol,
                    folder.year,
                    product.name,
                    timeout_s,
                )
                try:
                    stack.enter_context(lock.acquire(timeout=timeout_s))
                except Timeout:
                    raise IngestError(
                        f"another run still holds the lock on {folder.symbol} {folder.year} "
                        f"{product.name} after {timeout_s:.0f}s: "
                        "wait for it or raise --lock-timeout"
                    ) from None
        yield


def download(
    request: IngestRequest,
    *,
    client: DatabentoClient,
    folder: YearFolder,
    manifest: Manifest,
    plans: list[ProductPlan],
    progress: Progress,
) -> Iterator[ProductResult]:
    """Fetch all chunks of all products on one bounded pool, merging each product as it goes.

    Workers download, check and re-encode parts; this thread appends their records, in order,
    to the product's final file, so little is left to do when the last chunk lands.
    """
    if not plans:
        return
    scratch = ScratchFiles()
    stop = threading.Event()
    policy = RetryPolicy(retries=request.retries)
    started = time.monotonic()
    writers: dict[str, MergedWriter] = {}
    pool = ThreadPoolExecutor(max_workers=request.jobs, thread_name_prefix="chunk")
    try:
        chunk_jobs: dict[Future[Part], ProductPlan] = {}
        for plan in plans:
            product, chunks = plan.product, plan.chunks
            parts_dir = folder.parts(product.name)
            parts_dir.mkdir(parents=True, exist_ok=True)
            whole = RangeRequest(request.dataset, request.symbol, product.schema, plan.span)
            final = folder.final(product.name)
            writers[product.name] = MergedWriter(final, whole, chunks, plan.header, scratch)
            progress.start(product.name, parts_dir, len(chunks))
            for index, span in enumerate(chunks, start=1):
                label = (
                    f"{request.symbol} {request.year} {product.name} "
                    f"chunk {index}/{len(chunks)} {span}"
                )
                chunk_request = RangeRequest(request.dataset, request.symbol, product.schema, span)
                job = pool.submit(
                    fetch_chunk,
                    client=client,
                    request=chunk_request,
                    record_size=product.record_size,
                    parts_dir=parts_dir,
                    scratch=scratch,
                    policy=policy,
                    stop=stop,
                    label=label,
                    as_served=chunks == [plan.span],
                )
                chunk_jobs[job] = plan
        for job in as_completed(chunk_jobs):
            plan = chunk_jobs[job]
            part = job.result()
            writer = writers[plan.product.name]
            writer.add(part)
            progress.advance(plan.product.name, part.summary.bytes)
            if len(writer.parts) == len(plan.chunks):
                result = finish_product(
                    request,
                    folder=folder,
                    manifest=manifest,
                    plan=plan,
                    writer=writer,
                    started=started,
                )
                progress.finish(plan.product.name)
                yield result
    except KeyboardInterrupt:
        stop.set()
        progress.close()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        progress.close()
        pool.shutdown(wait=False)
        for writer in writers.values():
            writer.discard()
        scratch.remove_all()


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
    entry = product_entry(
        merged.path,
        product=product,
        request=request,
        span=plan.span,
        merged=merged,
        chunking=request.chunking,
        parts=parts,
    )
    manifest.record(request.symbol, request.year, product.name, entry)
    shutil.rmtree(folder.parts(product.name), ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parts(product.name).parent.rmdir()
    reused = sum(not part.downloaded for part in parts)
    return ProductResult(
        product,
        "downloaded",
        merged.bytes,
        merged.records,
        time.monotonic() - started,
        extra={"chunks": len(parts), "reused_chunks": reused},
    )
