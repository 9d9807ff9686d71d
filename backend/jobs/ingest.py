"""The use case: decide from the cache, answer what is cached, then preflight and fetch the rest.

1. One pure decision per product from what the cache's store holds (sizes and the manifest,
   never a file's body): skip, verify, adopt or fetch (`decision.decide`). A plain skip needs no
   lock; the others are decided again under the products' locks (dry runs only read). No
   Databento, no key, no budget yet.
2. Verify and adopt are answered without Databento; a file that fails them is fetched.
3. Only if something must be fetched: destinations checked (a bucket: a write probe), key,
   budget setting, preflight (metadata calls), budget check, room in the work dir, download.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from backend.jobs.cache import (
    PARTS_SUBDIR,
    YearFolder,
    check_working_dir,
    has_stale_temps,
    remove_stale_temps,
)
from backend.jobs.client import DatabentoClient
from backend.jobs.decision import Action, CacheKey, OnDisk, decide
from backend.jobs.errors import (
    CorruptFileError,
    CredentialsError,
    IngestError,
    InvalidInputError,
)
from backend.jobs.locks import locked
from backend.jobs.manifest import Manifest, ManifestContent, ManifestEntry, product_entry
from backend.jobs.plan import Product, TimeRange
from backend.jobs.request import IngestRequest, ProductResult
from backend.jobs.retry import RetryPolicy
from backend.jobs.settings import Settings
from backend.jobs.store import Store, sha256_of

if TYPE_CHECKING:
    from backend.jobs.preflight import Failure, UniversePlan
    from backend.jobs.progress import Progress

ClientFactory = Callable[..., Any]  # (key, gateway, *, timeout_s, policy, stop) -> client


@dataclass
class IngestReport:
    results: list[ProductResult]  # cached and downloaded products, in request order
    plan: UniversePlan  # preflight of what was (or would be) downloaded, and what could not be

    @property
    def failures(self) -> list[Failure]:
        return self.plan.failures

    @property
    def downloaded(self) -> list[ProductResult]:
        return [result for result in self.results if result.status == "downloaded"]


def run_ingest(
    request: IngestRequest,
    settings: Settings,
    client_factory: ClientFactory = DatabentoClient,
    progress: Progress | None = None,
) -> IngestReport:
    """Answer what is cached from local files; preflight, budget-check and fetch the rest.

    Symbol-years that cannot be fetched (unknown symbol, no data that year) are reported in
    the report's failures; the others complete.
    """
    from backend.jobs.preflight import UniversePlan

    store, work_root = settings.location()
    folders = [
        YearFolder(work_root, symbol, year, request.dataset, store)
        for year in request.years
        for symbol in request.symbols
    ]
    wanted = [(folder, product) for folder in folders for product in request.products]
    started = time.monotonic()
    results: dict[tuple[str, int, str], ProductResult] = {}
    plan = UniversePlan([], [])
    stop = threading.Event()  # set when the run ends early: nothing new starts, waits end
    policy = RetryPolicy(retries=request.retries)
    with contextlib.ExitStack() as stack:
        stack.callback(stop.set)
        undecided = settle(wanted, results, AnsweredWithoutLock(), request, started)
        if undecided and not request.dry_run:
            stack.enter_context(locked(undecided, request.lock_timeout_s))
        # again, under the lock: another run may have finished some meanwhile
        pending = settle(undecided, results, settle_from_cache, request, started)
        if pending:
            check_destinations(store, pending)
            # Only now the download machinery: a cached re-run must stay cheap to start.
            from backend.jobs.preflight import check_budget, plan_universe

            gateway, budget = settings.gateway_url(), settings.budget()  # input errors first
            key = settings.require_key()
            client = client_factory(
                key, gateway, timeout_s=request.timeout_s, policy=policy, stop=stop
            )
            plan = plan_universe(
                client,
                dataset=request.dataset,
                pending=pending,
                chunking=request.chunking,
                group_size=request.group_size,
                engine=request.engine or settings.engine(),
                batch_above=request.batch_above,
                dry_run=request.dry_run,
            )
            if not request.dry_run:
                check_budget(plan, budget)
                if settings.data_url is not None:
                    check_room(work_root, plan.estimated_bytes)
                try:
                    for result in fetch(
                        request,
                        client,
                        plan=plan,
                        progress=progress,
                        policy=policy,
                        stop=stop,
                        work_root=work_root,
                    ):
                        results[(result.symbol, result.year, result.product.name)] = result
                        result.log()
                except IngestError as exc:
                    if not plan.failures or isinstance(exc, CredentialsError):
                        raise
                    # Unknown symbol-years outrank a failed run in the exit code (2, not 1).
                    names = ", ".join(f"{f.symbol} {f.year}" for f in plan.failures)
                    raise InvalidInputError(f"{exc}; not fetched either: {names}") from None
    if not request.dry_run and not request.is_universe:
        logger.info("cache folder: {}", store.where(folders[0].key("")).rstrip("/"))
    keys = [(folder.symbol, folder.year, product.name) for folder, product in wanted]
    ordered = [results[key] for key in keys if key in results]
    return IngestReport(ordered, plan)


def settle(
    wanted: list[tuple[YearFolder, Product]],
    results: dict[tuple[str, int, str], ProductResult],
    answer: Callable[..., ProductResult | None],
    request: IngestRequest,
    started: float,
) -> list[tuple[YearFolder, Product]]:
    """Log and keep what the cache answers; return the rest."""
    rest = []
    for folder, product in wanted:
        cached = answer(folder, product, request, started)
        if cached:
            results[(folder.symbol, folder.year, product.name)] = cached
            cached.log()
        else:
            rest.append((folder, product))
    return rest


def look(folder: YearFolder, content: ManifestContent, product: Product) -> OnDisk:
    """The facts the decision needs: the final object's size (never its body) and its entry."""
    info = folder.storage.head(folder.final_key(product.name))
    return OnDisk(
        size=info.size if info is not None and info.is_file else None,
        not_a_file=info is not None and not info.is_file,
        entry=content.entries.get(product.name),
        damage=content.damage(product.name),
    )


class AnsweredWithoutLock:
    """A product the cache answers with nothing to write (no adoption, repair or leftovers to
    clean) needs no lock: the common cached re-run takes none, and pays no lease. Each
    folder's manifest is read once for all its products."""

    def __init__(self) -> None:
        self._manifests: dict[YearFolder, ManifestContent] = {}

    def __call__(
        self, folder: YearFolder, product: Product, request: IngestRequest, started: float
    ) -> ProductResult | None:
        if request.force or request.verify:
            return None
        if folder.parts(product.name).exists() or has_stale_temps(folder.path, product.name):
            return None
        if folder not in self._manifests:
            self._manifests[folder] = Manifest.of(folder).load()
        return skipped(folder, product, self._manifests[folder], request, started)


def skipped(
    folder: YearFolder,
    product: Product,
    content: ManifestContent,
    request: IngestRequest,
    started: float,
) -> ProductResult | None:
    """The product as skipped, when its file and entry answer the request as they are."""
    key = CacheKey(request.dataset, product.schema, folder.symbol, folder.year)
    decision = decide(look(folder, content, product), key, force=False, verify=False)
    if decision.action is not Action.SKIP or decision.why:
        return None
    entry = content.entries[product.name]
    elapsed = time.monotonic() - started
    return ProductResult(
        folder.symbol, folder.year, product, "skipped", entry.bytes, entry.records, elapsed
    )


def settle_from_cache(
    folder: YearFolder, product: Product, request: IngestRequest, started: float
) -> ProductResult | None:
    """A skipped result when the cache answers this product, else None (fetch it)."""
    manifest = Manifest.of(folder)
    if not request.dry_run:
        remove_stale_temps(folder.path, folder.final(product.name).name)
    key = CacheKey(request.dataset, product.schema, folder.symbol, folder.year)
    content = manifest.load()
    decision = decide(
        look(folder, content, product), key, force=request.force, verify=request.verify
    )
    final = folder.storage.where(folder.final_key(product.name))
    if decision.why:
        logger.warning("{} {}", final, decision.why)
    if decision.action is Action.FETCH:
        return None
    entry = content.entries[product.name] if decision.action is not Action.ADOPT else None
    key_name = folder.final_key(product.name)
    if decision.action is Action.VERIFY and sha256_of(folder.storage, key_name) != entry.sha256:
        logger.warning("{} fails its sha256 check against the manifest; re-downloading", final)
        return None
    if decision.action is Action.ADOPT:
        entry = adopted_entry(folder, product, key)
        if entry is None:
            return None
        if not request.dry_run:
            manifest.record(product.name, entry)
            logger.info("adopted {} into the manifest ({} records)", final, entry.records)
    if not request.dry_run:
        folder.drop_parts(product.name)
    elapsed = time.monotonic() - started
    return ProductResult(
        folder.symbol, folder.year, product, "skipped", entry.bytes, entry.records, elapsed
    )


def adopted_entry(folder: YearFolder, product: Product, key: CacheKey) -> ManifestEntry | None:
    """Validate a file that has no usable manifest entry, offline, and describe it (or None)."""
    from backend.jobs.dbnfile import scan

    store, name = folder.storage, folder.final_key(product.name)
    final = store.where(name)
    try:
        with store.reader(name) as source:
            summary = scan(source, product.record_size)
    except CorruptFileError as exc:
        logger.warning("{} is unusable ({}); re-downloading", final, exc)
        return None
    other = key.metadata_mismatch(summary.metadata)
    if other:
        logger.warning("{} holds another request's data ({}); re-downloading", final, other)
        return None
    span = TimeRange(summary.metadata.start, summary.metadata.end)
    recorded = key.recorded(span, "adopted")
    return product_entry(
        folder.final(product.name), request=recorded, merged=summary, parts=[], engine="adopted"
    )


def check_room(work_root: Path, needed: int) -> None:
    """A bucket's run writes its parts and merged files locally first: room for them, up front."""
    import shutil

    work_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work_root).free
    if free < needed:
        raise IngestError(
            f"the work dir {work_root} has {free / 1e6:,.0f} MB free; this run needs up to "
            f"{needed / 1e6:,.0f} MB there (parts and merged files before they are uploaded): "
            "free some space or choose another --work-dir"
        )


def check_destinations(store: Store, pending: list[tuple[YearFolder, Product]]) -> None:
    """Before any request: every final file can be written (a bucket: a write and delete probe
    under the prefix) and no working folder is a link."""
    store.check_writable([folder.final_key(product.name) for folder, product in pending])
    for folder, product in pending:
        for working in (folder.path / PARTS_SUBDIR, folder.parts(product.name)):
            if working.is_symlink() or working.exists():
                check_working_dir(working)


def fetch(
    request: IngestRequest,
    client: Any,
    *,
    plan: UniversePlan,
    progress: Progress | None,
    policy: RetryPolicy,
    stop: threading.Event,
    work_root: Path,
) -> Iterator[ProductResult]:
    """Download what the decision left to fetch (the caller holds the products' locks).

    Batch jobs are submitted first, so the service prepares them while the streamed groups
    download; then their files are fetched.
    """
    from backend.jobs.batch import BatchEngine
    from backend.jobs.download import download
    from backend.jobs.progress import NullProgress, OverallProgress

    progress = progress or NullProgress()
    if request.is_universe:
        parts = sum(len(group.chunks) * len(group.members) for group in plan.groups)
        progress = OverallProgress(progress, parts)
    for member in plan.members:
        parts = member.folder.make_parts(member.product.name)
        remove_stale_temps(parts)
    batch = BatchEngine(
        request,
        client,
        data_dir=work_root,
        policy=policy,
        stop=stop,
        progress=progress,
        timeout_s=request.batch_timeout_s,
    )
    try:
        batch.submit([group for group in plan.groups if group.engine == "batch"])
        yield from download(
            request,
            client=client,
            groups=[group for group in plan.groups if group.engine == "stream"],
            progress=progress,
            policy=policy,
            stop=stop,
        )
        yield from batch.collect(time.monotonic())
    finally:
        batch.close()
