"""The use case: for each product, skip what is cached, else plan, fetch chunks, merge, record."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from loguru import logger

from backend.jobs.cache import ScratchFiles, YearFolder, remove_stale_temps
from backend.jobs.chunks import Part, RetryPolicy, fetch_chunk
from backend.jobs.client import STYPE_IN, STYPE_OUT, DatabentoClient, RangeRequest
from backend.jobs.dbnfile import scan, sha256_file
from backend.jobs.errors import CorruptFileError, IngestError
from backend.jobs.logs import completion_line
from backend.jobs.manifest import CacheState, Manifest, cache_state, now_iso, versions
from backend.jobs.merge import ProductMerger
from backend.jobs.plan import Chunking, Product, TimeRange, clamp_year, format_ns
from backend.jobs.preflight import ProductPlan, check_budget, plan_product
from backend.jobs.progress import NullProgress, Progress
from backend.jobs.settings import Secret, Settings

ClientFactory = Callable[[Secret, str | None], Any]


@dataclass(frozen=True)
class IngestRequest:
    symbol: str
    year: int
    products: tuple[Product, ...]
    dataset: str = "XNAS.ITCH"
    force: bool = False
    verify: bool = False
    chunking: Chunking = "month"
    jobs: int = 4
    retries: int = 5
    lock_timeout_s: float = 600.0
    dry_run: bool = False


@dataclass
class ProductResult:
    product: Product
    status: str  # "downloaded" or "skipped"
    bytes: int
    records: int
    elapsed_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def log(self, request: IngestRequest) -> None:
        rate = (
            self.bytes / 1e6 / self.elapsed_s
            if self.status == "downloaded" and self.elapsed_s
            else 0
        )
        completion_line(
            symbol=request.symbol,
            year=request.year,
            product=self.product.name,
            status=self.status,
            bytes=self.bytes,
            elapsed_s=f"{self.elapsed_s:.2f}",
            records=self.records,
            mb_per_s=f"{rate:.1f}",
            **self.extra,
        )


@dataclass
class IngestReport:
    results: list[ProductResult]  # cached and downloaded products, in request order
    plans: list[ProductPlan]  # preflight of the products that were (or would be) downloaded


def run_ingest(
    request: IngestRequest,
    settings: Settings,
    client_factory: ClientFactory = DatabentoClient,
    progress: Progress | None = None,
) -> IngestReport:
    """Skip what is cached; preflight, budget-check, then fetch and merge the rest."""
    folder = YearFolder(settings.data_dir, request.symbol, request.year)
    manifest = Manifest(folder.manifest)
    results: dict[str, ProductResult] = {}
    started = time.monotonic()
    pending = []
    for product in request.products:
        cached = (
            None if request.force else cached_result(folder, manifest, product, request, started)
        )
        if cached:
            results[product.name] = cached
            cached.log(request)
        else:
            pending.append(product)
    plans: list[ProductPlan] = []
    if pending:
        client = client_factory(settings.require_key(), settings.gateway)
        available = client.dataset_range(request.dataset)
        for product in pending:
            span = clamp_year(
                request.year,
                available.get(product.schema, available["*"]),
                request.dataset,
                product.schema,
            )
            plans.append(
                plan_product(
                    client,
                    dataset=request.dataset,
                    symbol=request.symbol,
                    year=request.year,
                    product=product,
                    span=span,
                    chunking=request.chunking,
                )
            )
        if request.dry_run:
            return IngestReport(
                [results[p.name] for p in request.products if p.name in results], plans
            )
        check_budget(plans, settings.max_cost)
        folder.path.mkdir(parents=True, exist_ok=True)
        with locked(folder, pending, request.lock_timeout_s):
            todo = []
            for plan in plans:
                product = plan.product
                remove_stale_temps(folder.path, product.name)
                remove_stale_temps(folder.parts(product.name), "")
                cached = None
                if not request.force:
                    cached = cached_result(folder, manifest, product, request, started, adopt=True)
                if cached:
                    shutil.rmtree(folder.parts(product.name), ignore_errors=True)
                    results[product.name] = cached
                    cached.log(request)
                else:
                    todo.append(plan)
            for result in download(
                request,
                client=client,
                folder=folder,
                manifest=manifest,
                plans=todo,
                progress=progress or NullProgress(),
            ):
                results[result.product.name] = result
                result.log(request)
    logger.info("cache folder: {}", folder.path)
    return IngestReport([results[product.name] for product in request.products], plans)


def cached_result(
    folder: YearFolder,
    manifest: Manifest,
    product: Product,
    request: IngestRequest,
    started: float,
    *,
    adopt: bool = False,
) -> ProductResult | None:
    """A skipped result when the cache already holds this product, else None (download it)."""
    final = folder.final(product.name)
    size = final.stat().st_size if final.is_file() else None
    entry = manifest.entry(product.name)
    state = cache_state(size, entry)
    if state is CacheState.OK and entry is not None:
        if request.verify and sha256_file(final) != entry.get("sha256"):
            logger.warning("{} fails its sha256 check against the manifest; re-downloading", final)
            return None
        return ProductResult(
            product, "skipped", entry["bytes"], entry.get("records", 0), time.monotonic() - started
        )
    if state is CacheState.SIZE_MISMATCH and entry is not None:
        logger.warning(
            "{} is {} bytes but the manifest recorded {}; re-downloading",
            final,
            size,
            entry.get("bytes"),
        )
    if state is CacheState.UNRECORDED and adopt:
        entry = adopted_entry(final, product, request)
        if entry is not None:
            manifest.record(request.symbol, request.year, product.name, entry)
            logger.info("adopted {} into the manifest ({} records)", final, entry["records"])
            return ProductResult(
                product, "skipped", entry["bytes"], entry["records"], time.monotonic() - started
            )
    return None


def adopted_entry(final: Path, product: Product, request: IngestRequest) -> dict[str, Any] | None:
    """Validate a file cached without a manifest (older version) and describe it."""
    try:
        summary = scan(final, product.record_size)
    except CorruptFileError as exc:
        logger.warning("{} is unusable ({}); re-downloading", final, exc)
        return None
    metadata = summary.metadata
    if (
        metadata.dataset != request.dataset
        or str(metadata.schema) != product.schema
        or list(metadata.symbols) != [request.symbol]
    ):
        logger.warning("{} holds another request's data; re-downloading", final)
        return None
    span = TimeRange(metadata.start, metadata.end or metadata.start)
    return product_entry(
        final,
        product=product,
        request=request,
        span=span,
        merged=summary,
        chunking="adopted",
        parts=[],
    )


def product_entry(
    final: Path,
    *,
    product: Product,
    request: IngestRequest,
    span: TimeRange,
    merged: Any,
    chunking: str,
    parts: list[Part],
) -> dict[str, Any]:
    def stamp(ns: int | None) -> str | None:
        return None if ns is None else format_ns(ns)

    return {
        "file": final.name,
        "bytes": merged.bytes,
        "sha256": merged.sha256,
        "records": merged.records,
        "first_ts_recv": stamp(merged.first_ts_recv),
        "last_ts_recv": stamp(merged.last_ts_recv),
        "request": {
            "dataset": request.dataset,
            "schema": product.schema,
            "symbols": [request.symbol],
            "stype_in": STYPE_IN,
            "stype_out": STYPE_OUT,
            "start": span.start,
            "end": span.end,
            "chunking": chunking,
        },
        "chunks": [
            {
                "start": part.request.span.start,
                "end": part.request.span.end,
                "bytes": part.summary.bytes,
                "sha256": part.summary.sha256,
                "records": part.summary.records,
            }
            for part in sorted(parts, key=lambda part: part.request.span)
        ],
        "versions": versions(),
        "created_at": now_iso(),
    }


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

    Workers download and validate parts; this thread appends them in order, so the merge runs
    alongside the downloads and only the header is left when the last chunk lands.
    """
    if not plans:
        return
    scratch = ScratchFiles()
    stop = threading.Event()
    policy = RetryPolicy(retries=request.retries)
    started = time.monotonic()
    mergers: dict[str, ProductMerger] = {}
    pool = ThreadPoolExecutor(max_workers=request.jobs, thread_name_prefix="chunk")
    try:
        chunk_jobs: dict[Future[Part], ProductPlan] = {}
        for plan in plans:
            product, chunks = plan.product, plan.chunks
            parts_dir = folder.parts(product.name)
            parts_dir.mkdir(parents=True, exist_ok=True)
            mergers[product.name] = ProductMerger(
                folder.final(product.name), plan.span, chunks, product.record_size, scratch
            )
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
                )
                chunk_jobs[job] = plan
        for job in as_completed(chunk_jobs):
            plan = chunk_jobs[job]
            part = job.result()
            merger = mergers[plan.product.name]
            merger.add(part)
            progress.advance(plan.product.name, part.summary.bytes)
            if len(merger.parts) == len(plan.chunks):
                result = finish_product(
                    request,
                    folder=folder,
                    manifest=manifest,
                    plan=plan,
                    merger=merger,
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
        for merger in mergers.values():
            merger.discard()
        scratch.remove_all()


def finish_product(
    request: IngestRequest,
    *,
    folder: YearFolder,
    manifest: Manifest,
    plan: ProductPlan,
    merger: ProductMerger,
    started: float,
) -> ProductResult:
    """Publish the merged file, record it in the manifest, then drop the parts."""
    product = plan.product
    merged = merger.finish()
    entry = product_entry(
        merged.path,
        product=product,
        request=request,
        span=plan.span,
        merged=merged,
        chunking=request.chunking,
        parts=merger.parts,
    )
    manifest.record(request.symbol, request.year, product.name, entry)
    shutil.rmtree(folder.parts(product.name), ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parts(product.name).parent.rmdir()
    reused = sum(not part.downloaded for part in merger.parts)
    return ProductResult(
        product,
        "downloaded",
        merged.bytes,
        merged.records,
        time.monotonic() - started,
        extra={"chunks": len(merger.parts), "reused_chunks": reused},
    )
