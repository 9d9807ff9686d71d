"""The use case: for each product, skip what is cached, else plan, fetch chunks, merge, record."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from backend.jobs.cache import YearFolder, remove_stale_temps
from backend.jobs.client import DatabentoClient
from backend.jobs.dbnfile import sha256_file
from backend.jobs.errors import CorruptFileError
from backend.jobs.logs import completion_line
from backend.jobs.manifest import CacheState, Manifest, cache_state, product_entry
from backend.jobs.plan import Chunking, Product, TimeRange, clamp_year
from backend.jobs.settings import Secret, Settings

if TYPE_CHECKING:
    from backend.jobs.preflight import ProductPlan
    from backend.jobs.progress import Progress

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
            elapsed_s=round(self.elapsed_s, 2),
            records=self.records,
            mb_per_s=round(rate, 1),
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
        # Only now the download machinery: a cached re-run must stay cheap to start.
        from backend.jobs.download import download, locked
        from backend.jobs.preflight import check_budget, plan_product
        from backend.jobs.progress import NullProgress

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
