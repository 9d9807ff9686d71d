"""The use case: for each product, skip what is cached, else plan, fetch chunks, merge, record."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from backend.jobs.cache import YearFolder, remove_stale_temps
from backend.jobs.client import DatabentoClient
from backend.jobs.dbnfile import sha256_file
from backend.jobs.errors import CorruptFileError
from backend.jobs.manifest import CacheState, Manifest, cache_state, product_entry
from backend.jobs.plan import Product, TimeRange, clamp_year
from backend.jobs.request import IngestRequest, ProductResult
from backend.jobs.settings import Secret, Settings

if TYPE_CHECKING:
    from backend.jobs.preflight import ProductPlan
    from backend.jobs.progress import Progress

ClientFactory = Callable[[Secret, str | None], Any]


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
    started = time.monotonic()
    results: dict[str, ProductResult] = {}
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
        # Only now the download machinery: a cached re-run must stay cheap to start.
        from backend.jobs.preflight import check_budget

        client = client_factory(settings.require_key(), settings.gateway)
        plans = preflight(client, request, pending)
        if not request.dry_run:
            check_budget(plans, settings.max_cost)
            fetched = fetch(
                request,
                client,
                folder=folder,
                manifest=manifest,
                plans=plans,
                started=started,
                progress=progress,
            )
            for result in fetched:
                results[result.product.name] = result
                result.log(request)
    if not request.dry_run:
        logger.info("cache folder: {}", folder.path)
    return IngestReport([results[p.name] for p in request.products if p.name in results], plans)


def preflight(client: Any, request: IngestRequest, products: list[Product]) -> list[ProductPlan]:
    """Per product: the year clamped to the dataset, resolved, estimated (metadata calls only)."""
    from backend.jobs.preflight import plan_product

    available = client.dataset_range(request.dataset)

    def plan(product: Product) -> ProductPlan:
        schema_range = available.get(product.schema, available["*"])
        span = clamp_year(request.year, schema_range, request.dataset, product.schema)
        return plan_product(
            client,
            dataset=request.dataset,
            symbol=request.symbol,
            year=request.year,
            product=product,
            span=span,
            chunking=request.chunking,
        )

    # Each SDK call is a new HTTPS connection: asking for all products at once saves round trips.
    with ThreadPoolExecutor(max_workers=len(products), thread_name_prefix="preflight") as pool:
        return list(pool.map(plan, products))


def fetch(
    request: IngestRequest,
    client: Any,
    *,
    folder: YearFolder,
    manifest: Manifest,
    plans: list[ProductPlan],
    started: float,
    progress: Progress | None,
) -> Iterator[ProductResult]:
    """Under the products' locks: skip what another run finished meanwhile, download the rest."""
    from backend.jobs.download import download, locked
    from backend.jobs.progress import NullProgress

    folder.path.mkdir(parents=True, exist_ok=True)
    with locked(folder, [plan.product for plan in plans], request.lock_timeout_s):
        todo = []
        for plan in plans:
            product = plan.product
            remove_stale_temps(folder.path, product.name)
            remove_stale_temps(folder.parts(product.name), "")
            cached = None
            if not request.force:
                cached = cached_result(folder, manifest, product, request, started, locked=True)
            if cached:
                shutil.rmtree(folder.parts(product.name), ignore_errors=True)
                yield cached
            else:
                todo.append(plan)
        yield from download(
            request,
            client=client,
            folder=folder,
            manifest=manifest,
            plans=todo,
            progress=progress or NullProgress(),
        )


def cached_result(
    folder: YearFolder,
    manifest: Manifest,
    product: Product,
    request: IngestRequest,
    started: float,
    *,
    locked: bool = False,
) -> ProductResult | None:
    """A skipped result when the cache already holds this product, else None (download it).

    Before the lock this only looks; under it, it also reports what is wrong and adopts a
    valid file that has no manifest entry.
    """
    final = folder.final(product.name)
    size = final.stat().st_size if final.is_file() else None
    entry = manifest.entry(product.name)
    state = cache_state(size, entry)
    if state is CacheState.OK and entry is not None:
        if request.verify and sha256_file(final) != entry.get("sha256"):
            if locked:
                logger.warning(
                    "{} fails its sha256 check against the manifest; re-downloading", final
                )
            return None
        return ProductResult(
            product, "skipped", entry["bytes"], entry.get("records", 0), time.monotonic() - started
        )
    if not locked:
        return None
    if state is CacheState.SIZE_MISMATCH and entry is not None:
        logger.warning(
            "{} is {} bytes but the manifest recorded {}; re-downloading",
            final,
            size,
            entry.get("bytes"),
        )
    if state is CacheState.UNRECORDED:
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
    from backend.jobs.dbnfile import scan

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
