"""The use case: decide from the cache, answer what is cached, then preflight and fetch the rest.

1. One pure decision per product from what the cache's store holds (sizes and the manifest,
   never a file's body): skip, verify, adopt or fetch (`decision.decide`). A plain skip needs no
   lock; the others are decided again under the products' locks (dry runs only read). No
   Databento, no key, no budget yet.
2. Verify and adopt are answered without Databento; a file that fails them is fetched. A file
   adopted only if its header is the request's (`decision.adoption`); one whose range only the
   dataset can confirm waits for the free metadata of step 3.
3. Only if something must be fetched, every local precondition first: the work dir usable
   (named by its flag), working folders real and writable, final paths writable (a bucket: a
   write probe); then key, budget setting, the range of files waiting for it, preflight
   (metadata calls), budget check, batch folders, room in the work dir; only then anything billed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from backend.jobs.cache.decision import Action, CacheKey, FileHeader, Fit, OnDisk, adoption, decide
from backend.jobs.cache.layout import (
    LOCKS_SUBDIR,
    PARTS_SUBDIR,
    RAW_SUBDIR,
    YearFolder,
    check_existing_working_dir,
    has_stale_temps,
    remove_stale_temps,
    writable_folder,
)
from backend.jobs.cache.locks import locked
from backend.jobs.cache.manifest import Manifest, ManifestContent, ManifestEntry, product_entry
from backend.jobs.client.databento import DatabentoClient
from backend.jobs.client.retry import RetryPolicy
from backend.jobs.core.ranges import Product, TimeRange
from backend.jobs.core.request import IngestRequest, ProductResult
from backend.jobs.errors import (
    CorruptFileError,
    IngestError,
    InvalidInputError,
    combined_exit_code,
)
from backend.jobs.settings import Settings
from backend.jobs.store.base import Store, sha256_of

if TYPE_CHECKING:
    from backend.jobs.cli.progress import Progress
    from backend.jobs.core.dbn import StreamSummary
    from backend.jobs.plan.preflight import Failure, UniversePlan

ClientFactory = Callable[..., Any]  # (key, gateway, *, timeout_s, policy, stop) -> client


@dataclass
class IngestReport:
    """What a run did: every symbol-year-product is either in `results` or in `failures`."""

    results: list[ProductResult]  # cached and downloaded products, in request order
    plan: UniversePlan  # preflight of what was (or would be) downloaded, and what could not be
    error: IngestError | None = None  # what stopped the downloads, if anything did
    unfetched: list[Failure] = field(default_factory=list)  # planned, left by `error`

    @property
    def failures(self) -> list[Failure]:
        """Unknown or without data (found by the preflight), then what the failed run left."""
        return [*self.plan.failures, *self.unfetched]

    @property
    def downloaded(self) -> list[ProductResult]:
        return [result for result in self.results if result.status == "downloaded"]

    @property
    def exit_code(self) -> int:
        """3 (credentials) > 1 (a failure: run again) > 2 (input to fix) > 0."""
        codes = [failure.exit_code for failure in self.failures]
        return combined_exit_code([*codes, self.error.exit_code] if self.error else codes)


def left_by(
    error: IngestError, plan: UniversePlan, done: set[tuple[str, int, str]]
) -> list[Failure]:
    """Pure: each planned symbol-year-product the failed run did not finish, with its error."""
    from backend.jobs.plan.preflight import FAILED, Failure

    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return [
        Failure(
            member.symbol,
            member.year,
            line,
            reason=FAILED,
            product=member.product.name,
            exit_code=error.exit_code,
        )
        for member in plan.members
        if (member.symbol, member.year, member.product.name) not in done
    ]


def run_ingest(
    request: IngestRequest,
    settings: Settings,
    client_factory: ClientFactory = DatabentoClient,
    progress: Progress | None = None,
) -> IngestReport:
    """Answer what is cached from local files; preflight, budget-check and fetch the rest.

    Symbol-years that cannot be fetched (unknown symbol, no data that year) are reported in
    the report's failures; the others complete. A failure while downloading (after its
    retries) stops the downloads: what finished is kept, the error and every planned
    symbol-year-product it left unfetched are in the report (errors before any download,
    such as the preflight's, are raised).
    """
    from backend.jobs.plan.preflight import UniversePlan

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
    error: IngestError | None = None
    stop = threading.Event()  # set when the run ends early: nothing new starts, waits end
    policy = RetryPolicy(retries=request.retries)
    with contextlib.ExitStack() as stack:
        stack.callback(stop.set)
        undecided = settle(wanted, results, AnsweredWithoutLock(), request, started)
        if undecided and not request.dry_run:
            stack.enter_context(locked(undecided, request.lock_timeout_s))
        # again, under the lock: another run may have finished some meanwhile
        from_cache = SettleFromCache()
        pending = settle(undecided, results, from_cache, request, started)
        if pending:
            # Every local precondition before anything is asked of anyone.
            engine = request.engine or settings.engine()
            if not request.dry_run:
                check_work_dir(settings, work_root)
            check_destinations(store, pending, work_root=work_root, batch=engine == "batch")
            # Only now the download machinery: a cached re-run must stay cheap to start.
            from backend.jobs.plan.preflight import check_budget, plan_universe

            gateway, budget = settings.gateway_url(), settings.budget()  # input errors first
            key = settings.require_key()
            client = client_factory(
                key, gateway, timeout_s=request.timeout_s, policy=policy, stop=stop
            )
            if from_cache.candidates:
                pending = from_cache.confirm(client, request, pending, results, started)
            if pending:
                plan = plan_universe(
                    client,
                    dataset=request.dataset,
                    pending=pending,
                    chunking=request.chunking,
                    group_size=request.group_size,
                    engine=engine,
                    batch_above=request.batch_above,
                    dry_run=request.dry_run,
                    force=request.force,
                )
            if not request.dry_run:
                check_budget(plan, budget)
                check_batch_folders(work_root, plan)
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
                except IngestError as exc:  # reported with what it left; the caller exits
                    error = exc
    if not request.dry_run and not request.is_universe and error is None:
        logger.info("cache folder: {}", store.where(folders[0].key("")).rstrip("/"))
    keys = [(folder.symbol, folder.year, product.name) for folder, product in wanted]
    ordered = [results[key] for key in keys if key in results]
    unfetched = left_by(error, plan, set(results)) if error else []
    return IngestReport(ordered, plan, error, unfetched)


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


class SettleFromCache:
    """Under the locks: a skipped result when the cache answers a product, else None (fetch it).

    A file with no usable entry whose range only the dataset can confirm is kept as a
    candidate; `confirm` adopts it, or has it fetched again, once the service's free metadata
    has told that range.
    """

    def __init__(self) -> None:
        self.candidates: dict[tuple[YearFolder, str], StreamSummary] = {}

    def __call__(
        self, folder: YearFolder, product: Product, request: IngestRequest, started: float
    ) -> ProductResult | None:
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
        if decision.action is Action.ADOPT:
            return self.adopted(folder, product, key, request, started)
        entry = content.entries[product.name]
        key_name = folder.final_key(product.name)
        if decision.action is Action.VERIFY and sha256_of(folder.storage, key_name) != entry.sha256:
            logger.warning("{} fails its sha256 check against the manifest; re-downloading", final)
            return None
        if not request.dry_run:
            folder.drop_parts(product.name)
        elapsed = time.monotonic() - started
        return ProductResult(
            folder.symbol, folder.year, product, "skipped", entry.bytes, entry.records, elapsed
        )

    def adopted(
        self,
        folder: YearFolder,
        product: Product,
        key: CacheKey,
        request: IngestRequest,
        started: float,
    ) -> ProductResult | None:
        """A file with no usable entry: its header judged first, then the file decoded whole;
        adopted if it is the request's, kept as a candidate if only the dataset's range can
        tell, else None (fetch it)."""
        header = read_header(folder, product)
        if header is None:
            return None
        verdict = adoption(key, header, now_ns=time.time_ns())
        if verdict.fit is Fit.REFUSE:
            refused(folder, product, verdict.why)
            return None
        summary = scanned(folder, product)
        if summary is None:
            return None
        if verdict.fit is Fit.ASK:
            self.candidates[(folder, product.name)] = summary
            return None
        return adopt(folder, product, key, summary, request, started)

    def confirm(
        self,
        client: Any,
        request: IngestRequest,
        pending: list[tuple[YearFolder, Product]],
        results: dict[tuple[str, int, str], ProductResult],
        started: float,
    ) -> list[tuple[YearFolder, Product]]:
        """Adopt each candidate whose range is exactly what a fetch would ask for (free metadata
        calls only); return the rest of `pending`, to fetch (a refused file with one warning)."""
        waiting = [(f, p) for f, p in pending if (f, p.name) in self.candidates]
        expected = expected_spans(client, request.dataset, waiting)
        rest = []
        for folder, product in pending:
            summary = self.candidates.get((folder, product.name))
            span = expected.get((folder, product.name))
            if summary is None or span is None:  # no range for it: the preflight says why
                rest.append((folder, product))
                continue
            key = CacheKey(request.dataset, product.schema, folder.symbol, folder.year)
            header = FileHeader.of(summary.metadata)
            verdict = adoption(key, header, now_ns=time.time_ns(), expected=span)
            if verdict.fit is not Fit.ADOPT:
                refused(folder, product, verdict.why)
                rest.append((folder, product))
                continue
            result = adopt(folder, product, key, summary, request, started)
            results[(folder.symbol, folder.year, product.name)] = result
            result.log()
        return rest


def expected_spans(
    client: Any, dataset: str, products: list[tuple[YearFolder, Product]]
) -> dict[tuple[YearFolder, str], TimeRange]:
    """The range a fetch of each product asks for, as the preflight clamps it: the year cut to
    the dataset, then to where the symbol is listed (metadata and symbology calls, free)."""
    from backend.jobs.core.ranges import clamp_year
    from backend.jobs.plan.preflight import Failure, resolve_all, resolved_span

    if not products:
        return {}
    available = client.dataset_range(dataset)
    spans: dict[tuple[int, Product], TimeRange] = {}
    failures: dict[tuple[str, int], Failure] = {}
    for folder, product in products:
        try:
            schema_range = available.get(product.schema, available["*"])
            spans[(folder.year, product)] = clamp_year(
                folder.year, schema_range, dataset, product.schema
            )
        except InvalidInputError as exc:
            failures[(folder.symbol, folder.year)] = Failure(folder.symbol, folder.year, str(exc))
    answers = resolve_all(client, dataset, products, spans, failures)
    found = {}
    for folder, product in products:
        span = spans.get((folder.year, product))
        if span is None or (folder.symbol, folder.year) in failures:
            continue
        covered = resolved_span(answers[(span, folder.symbol)], folder.symbol, span)
        if covered is not None:
            found[(folder, product.name)] = covered
    return found


def read_header(folder: YearFolder, product: Product) -> FileHeader | None:
    """A file's own DBN header, its first frame only (None: unusable, said once)."""
    from backend.jobs.core.dbn import read_metadata

    store, name = folder.storage, folder.final_key(product.name)
    try:
        with store.reader(name) as source:
            return FileHeader.of(read_metadata(source))
    except CorruptFileError as exc:
        logger.warning("{} is unusable ({}); re-downloading", store.where(name), exc)
        return None


def scanned(folder: YearFolder, product: Product) -> StreamSummary | None:
    """A file with no usable entry decoded whole, offline (None: unusable, said once)."""
    from backend.jobs.core.dbn import scan

    store, name = folder.storage, folder.final_key(product.name)
    try:
        with store.reader(name) as source:
            return scan(source, product.record_size)
    except CorruptFileError as exc:
        logger.warning("{} is unusable ({}); re-downloading", store.where(name), exc)
        return None


def refused(folder: YearFolder, product: Product, why: str) -> None:
    """The one line saying why a file found where a product belongs is fetched again."""
    final = folder.storage.where(folder.final_key(product.name))
    logger.warning(
        "{} {} {}: the file at {} {}; fetching it again",
        *(folder.symbol, folder.year, product.name, final, why),
    )


def adopt(  # noqa: PLR0917  one adopted product, as the callers hold it
    folder: YearFolder,
    product: Product,
    key: CacheKey,
    summary: StreamSummary,
    request: IngestRequest,
    started: float,
) -> ProductResult:
    """Record a file whose header is the request's (a dry run only counts it), as skipped."""
    entry = adopted_entry(folder, product, key, summary)
    if not request.dry_run:
        Manifest.of(folder).record(product.name, entry)
        final = folder.storage.where(folder.final_key(product.name))
        logger.info("adopted {} into the manifest ({} records)", final, entry.records)
        folder.drop_parts(product.name)
    elapsed = time.monotonic() - started
    return ProductResult(
        folder.symbol, folder.year, product, "skipped", entry.bytes, entry.records, elapsed
    )


def adopted_entry(
    folder: YearFolder, product: Product, key: CacheKey, summary: StreamSummary
) -> ManifestEntry:
    """The manifest entry of an adopted file, described by its own header and content."""
    metadata = summary.metadata
    span = TimeRange(metadata.start, metadata.end)
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


def check_work_dir(settings: Settings, work_root: Path) -> None:
    """A bucket's run writes its parts and merged files in the work dir: before any request,
    it must take files (created if absent); else exit 2 naming --work-dir."""
    if settings.data_url is None:
        return
    problem = writable_folder(work_root)
    if problem is None:
        return
    if settings.work_dir is not None:
        raise InvalidInputError(
            f"--work-dir {settings.work_dir} is not writable: {problem}; pick a writable folder"
        )
    raise InvalidInputError(
        f"the work dir {work_root} is not writable: {problem}; pick a writable folder with "
        "--work-dir"
    )


def check_destinations(
    store: Store,
    pending: list[tuple[YearFolder, Product]],
    *,
    work_root: Path | None = None,
    batch: bool = False,
) -> None:
    """Before any request: every working folder already there is a real, writable folder (with
    `batch`, the batch engine's too), then every final file can be written (a bucket: a write
    and delete probe under the prefix)."""
    folders = [
        working
        for folder, product in pending
        for working in (folder.path / PARTS_SUBDIR, folder.parts(product.name))
    ]
    if batch and work_root is not None:
        folders += batch_folders(work_root)
    for working in dict.fromkeys(folders):
        check_existing_working_dir(working)
    store.check_writable([folder.final_key(product.name) for folder, product in pending])


def batch_folders(work_root: Path, job_ids: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """The batch engine's working folders: its jobs' downloads and their locks."""
    from backend.jobs.engines.batch import BATCH_SUBDIR

    root = work_root / RAW_SUBDIR
    return [
        root / BATCH_SUBDIR,
        root / LOCKS_SUBDIR,
        root / LOCKS_SUBDIR / BATCH_SUBDIR,
        *(root / BATCH_SUBDIR / job_id for job_id in job_ids),
    ]


def check_batch_folders(work_root: Path, plan: UniversePlan) -> None:
    """Before any job is submitted or resumed: its folders are real, writable folders (the
    engine is known only after the preflight with --engine auto)."""
    groups = [group for group in plan.groups if group.engine == "batch"]
    if not groups:
        return
    job_ids = [str(group.job.job_id) for group in groups if group.job and group.job.job_id]
    for working in batch_folders(work_root, job_ids):
        check_existing_working_dir(working)


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
    from backend.jobs.cli.progress import NullProgress, OverallProgress
    from backend.jobs.engines.batch import BatchEngine
    from backend.jobs.engines.stream import download

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
