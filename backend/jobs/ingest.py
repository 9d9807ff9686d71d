"""The use case: decide from the cache, lock, plan what is left, run the engines.

1. Decide, pure, per product from what the cache's store holds (sizes and the manifest, never
   a file's body): skip, verify, adopt or fetch (`cache.decision.decide`). A plain skip needs
   no lock; the others are decided again under the products' locks (dry runs only read). No
   Databento, no key, no budget yet.
2. Verify and adopt are answered without Databento; a file that fails them is fetched. A file
   is adopted only if its header is the request's (`cache.decision.adoption`); one whose range
   only the dataset can confirm waits for the free metadata of step 3.
3. Only if something must be fetched, every local precondition first: the work dir usable
   (named by its flag), working folders real and writable, final paths writable (a bucket: a
   write probe); then key, budget setting, the range of files waiting for it, preflight
   (metadata calls), budget check, batch folders, room in the work dir; only then the engines,
   and anything billed.
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
from backend.jobs.cache.entry import ManifestContent, ManifestEntry
from backend.jobs.cache.inventory import file_header
from backend.jobs.cache.layout import LOCKS_SUBDIR, PARTS_SUBDIR, RAW_SUBDIR, YearFolder
from backend.jobs.cache.locks import locked
from backend.jobs.cache.manifest import Manifest, product_entry
from backend.jobs.client.databento import DatabentoClient
from backend.jobs.client.retry import RetryPolicy
from backend.jobs.core.files import (
    check_existing_working_dir,
    has_stale_temps,
    remove_stale_temps,
)
from backend.jobs.core.progress import NullProgress, Progress
from backend.jobs.core.ranges import Product, TimeRange
from backend.jobs.core.request import IngestRequest, ProductResult
from backend.jobs.errors import CorruptFileError, IngestError, InvalidInputError, combined_exit_code
from backend.jobs.settings import Settings
from backend.jobs.store import open_store
from backend.jobs.store.base import Store, sha256_of

if TYPE_CHECKING:
    from backend.jobs.core.dbn import StreamSummary
    from backend.jobs.core.work import RunConfig
    from backend.jobs.engines.runtime import Runtime
    from backend.jobs.plan.preflight import Failure, UniversePlan

ClientFactory = Callable[..., Any]  # (key, gateway, *, timeout_s, policy, stop) -> client
Wanted = tuple[YearFolder, Product]  # one symbol-year-product of the request
Answer = Callable[[YearFolder, Product], ProductResult | None]  # None: not answered here


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
    """Answer what is cached from the cache's store; preflight, budget-check and fetch the rest.

    Symbol-years that cannot be fetched (unknown symbol, no data that year) are reported in
    the report's failures; the others complete. A failure while downloading (after its
    retries) stops the downloads: what finished is kept, the error and every planned
    symbol-year-product it left unfetched are in the report (errors before any download,
    such as the preflight's, are raised).
    """
    from backend.jobs.plan.preflight import UniversePlan

    work_root = settings.work_root()
    store = open_store(settings.store_location())
    folders = [
        YearFolder(symbol, year, request.dataset, store=store, work_root=work_root)
        for year in request.years
        for symbol in request.symbols
    ]
    wanted = [(folder, product) for folder in folders for product in request.products]
    answers = Answers(time.monotonic())
    plan, error = UniversePlan([], []), None
    stop = threading.Event()  # set when the run ends early: nothing new starts, waits end
    with contextlib.ExitStack() as stack:
        stack.callback(stop.set)
        undecided = answers.take(wanted, SkipWithoutLock(request, answers.started))
        if undecided and not request.dry_run:
            stack.enter_context(locked(store, undecided, request.lock_timeout_s))
        # again, under the locks: another run may have finished some meanwhile
        cache = DecideFromCache(request, answers.started)
        pending = answers.take(undecided, cache)
        if pending:
            plan, error = fetch_pending(
                pending,
                cache,
                answers,
                request=request,
                settings=settings,
                store=store,
                work_root=work_root,
                client_factory=client_factory,
                progress=progress or NullProgress(),
                stop=stop,
            )
    if not request.dry_run and not request.is_universe and error is None:
        logger.info("cache folder: {}", store.where(folders[0].key("")).rstrip("/"))
    ordered = answers.ordered(wanted)
    unfetched = left_by(error, plan, set(answers.results)) if error else []
    return IngestReport(ordered, plan, error, unfetched)


class Answers:
    """The products answered so far (cached or downloaded), each logged once as it comes."""

    def __init__(self, started: float) -> None:
        self.started = started  # the run's start: what each result's elapsed time counts from
        self.results: dict[tuple[str, int, str], ProductResult] = {}

    def add(self, result: ProductResult) -> None:
        self.results[(result.symbol, result.year, result.product.name)] = result
        result.log()

    def take(self, wanted: list[Wanted], answer: Answer) -> list[Wanted]:
        """Keep what `answer` answers; return the rest."""
        rest = []
        for folder, product in wanted:
            result = answer(folder, product)
            if result is None:
                rest.append((folder, product))
            else:
                self.add(result)
        return rest

    def ordered(self, wanted: list[Wanted]) -> list[ProductResult]:
        """The results in the request's order."""
        keys = [(folder.symbol, folder.year, product.name) for folder, product in wanted]
        return [self.results[key] for key in keys if key in self.results]


# 1. Decide from the cache


def on_disk_state(folder: YearFolder, content: ManifestContent, product: Product) -> OnDisk:
    """The facts the decision needs: the final object's size (never its body) and its entry."""
    info = folder.store.head(folder.final_key(product.name))
    return OnDisk(
        size=info.size if info is not None and info.is_file else None,
        not_a_file=info is not None and not info.is_file,
        entry=content.entries.get(product.name),
        damage=content.damage(product.name),
    )


def cache_key(request: IngestRequest, folder: YearFolder, product: Product) -> CacheKey:
    return CacheKey(request.dataset, product.schema, folder.symbol, folder.year)


def skipped_result(
    folder: YearFolder, product: Product, entry: ManifestEntry, started: float
) -> ProductResult:
    """A product the cache answers: what its manifest entry says the file holds."""
    elapsed = time.monotonic() - started
    return ProductResult(
        folder.symbol, folder.year, product, "skipped", entry.bytes, entry.records, elapsed
    )


class SkipWithoutLock:
    """A product the cache answers with nothing to write (no adoption, repair or leftovers to
    clean) needs no lock: the common cached re-run takes none, and pays no lease. Each
    folder's manifest is read once for all its products."""

    def __init__(self, request: IngestRequest, started: float) -> None:
        self.request = request
        self.started = started
        self._manifests: dict[YearFolder, ManifestContent] = {}

    def __call__(self, folder: YearFolder, product: Product) -> ProductResult | None:
        if self.request.force or self.request.verify:
            return None
        if folder.parts(product.name).exists() or has_stale_temps(folder.path, product.name):
            return None
        if folder not in self._manifests:
            self._manifests[folder] = Manifest.of(folder.store, folder).load()
        content = self._manifests[folder]
        on_disk = on_disk_state(folder, content, product)
        key = cache_key(self.request, folder, product)
        decision = decide(on_disk, key, force=False, verify=False)
        if decision.action is not Action.SKIP or decision.why:
            return None
        return skipped_result(folder, product, content.entries[product.name], self.started)


class DecideFromCache:
    """Under the locks: a skipped result when the cache answers a product, else None (fetch it).

    A file with no usable entry whose range only the dataset can confirm is kept as a
    candidate; `confirm` adopts it, or has it fetched again, once the service's free metadata
    has told that range.
    """

    def __init__(self, request: IngestRequest, started: float) -> None:
        self.request = request
        self.started = started
        self.candidates: dict[tuple[YearFolder, str], StreamSummary] = {}

    def __call__(self, folder: YearFolder, product: Product) -> ProductResult | None:
        request = self.request
        if not request.dry_run:
            remove_stale_temps(folder.path, folder.final(product.name).name)
        content = Manifest.of(folder.store, folder).load()
        key = cache_key(request, folder, product)
        on_disk = on_disk_state(folder, content, product)
        decision = decide(on_disk, key, force=request.force, verify=request.verify)
        final = folder.store.where(folder.final_key(product.name))
        if decision.why:
            logger.warning("{} {}", final, decision.why)
        if decision.action is Action.FETCH:
            return None
        if decision.action is Action.ADOPT:
            return self.adopted(folder, product, key)
        entry = content.entries[product.name]
        if decision.action is Action.VERIFY and not self.verified(folder, product, entry):
            logger.warning("{} fails its sha256 check against the manifest; re-downloading", final)
            return None
        if not request.dry_run:
            folder.drop_parts(product.name)
        return skipped_result(folder, product, entry, self.started)

    @staticmethod
    def verified(folder: YearFolder, product: Product, entry: ManifestEntry) -> bool:
        """--verify: the file hashes to its entry (streamed through the hash)."""
        return sha256_of(folder.store, folder.final_key(product.name)) == entry.sha256

    def adopted(self, folder: YearFolder, product: Product, key: CacheKey) -> ProductResult | None:
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
        return adopt(
            folder, product, key, summary, dry_run=self.request.dry_run, started=self.started
        )

    def confirm(self, client: Any, pending: list[Wanted], answers: Answers) -> list[Wanted]:
        """Adopt each candidate whose range is exactly what a fetch would ask for (free metadata
        calls only); return the rest of `pending`, to fetch (a refused file with one warning)."""
        waiting = [(f, p) for f, p in pending if (f, p.name) in self.candidates]
        expected = expected_spans(client, self.request.dataset, waiting)
        rest = []
        for folder, product in pending:
            summary = self.candidates.get((folder, product.name))
            span = expected.get((folder, product.name))
            if summary is None or span is None:  # no range for it: the preflight says why
                rest.append((folder, product))
                continue
            key = cache_key(self.request, folder, product)
            header = FileHeader.of(summary.metadata)
            verdict = adoption(key, header, now_ns=time.time_ns(), expected=span)
            if verdict.fit is not Fit.ADOPT:
                refused(folder, product, verdict.why)
                rest.append((folder, product))
                continue
            answers.add(
                adopt(
                    folder,
                    product,
                    key,
                    summary,
                    dry_run=self.request.dry_run,
                    started=self.started,
                )
            )
        return rest


def expected_spans(
    client: Any, dataset: str, products: list[Wanted]
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
    key = folder.final_key(product.name)
    header, problem = file_header(folder.store, key)
    if header is None:
        logger.warning("{} is unusable ({}); re-downloading", folder.store.where(key), problem)
    return header


def scanned(folder: YearFolder, product: Product) -> StreamSummary | None:
    """A file with no usable entry decoded whole, offline (None: unusable, said once)."""
    from backend.jobs.core.dbn import scan

    store, key = folder.store, folder.final_key(product.name)
    try:
        with store.reader(key) as source:
            return scan(source, product.record_size)
    except CorruptFileError as exc:
        logger.warning("{} is unusable ({}); re-downloading", store.where(key), exc)
        return None


def refused(folder: YearFolder, product: Product, why: str) -> None:
    """The one line saying why a file found where a product belongs is fetched again."""
    final = folder.store.where(folder.final_key(product.name))
    logger.warning(
        "{} {} {}: the file at {} {}; fetching it again",
        *(folder.symbol, folder.year, product.name, final, why),
    )


def adopt(
    folder: YearFolder,
    product: Product,
    key: CacheKey,
    summary: StreamSummary,
    *,
    dry_run: bool,
    started: float,
) -> ProductResult:
    """Record a file whose header is the request's (a dry run only counts it), as skipped."""
    metadata = summary.metadata
    recorded = key.recorded(TimeRange(metadata.start, metadata.end), "adopted")
    entry = product_entry(
        folder.final(product.name).name, request=recorded, content=summary, engine="adopted"
    )
    if not dry_run:
        Manifest.of(folder.store, folder).record(product.name, entry)
        final = folder.store.where(folder.final_key(product.name))
        logger.info("adopted {} into the manifest ({} records)", final, entry.records)
        folder.drop_parts(product.name)
    return skipped_result(folder, product, entry, started)


# 2. Fetch the rest: every local precondition, then the key, the preflight and the budget


def fetch_pending(
    pending: list[Wanted],
    cache: DecideFromCache,
    answers: Answers,
    *,
    request: IngestRequest,
    settings: Settings,
    store: Store,
    work_root: Path,
    client_factory: ClientFactory,
    progress: Progress,
    stop: threading.Event,
) -> tuple[UniversePlan, IngestError | None]:
    """Check every local precondition before anything is asked of anyone; then the key, the
    preflight and the budget; then the engines. The plan, and what stopped the downloads."""
    engine = request.engine or settings.engine()
    if not request.dry_run:
        settings.check_work_root(work_root)
    check_destinations(store, pending, work_root=work_root, batch=engine == "batch")
    # Only now the download machinery: a cached re-run must stay cheap to start.
    from backend.jobs.core.work import RunConfig
    from backend.jobs.engines.runtime import Runtime
    from backend.jobs.plan.preflight import UniversePlan, check_budget, plan_universe

    gateway, budget = settings.gateway_url(), settings.budget()  # input errors first
    cluster = settings.cluster()
    key = settings.require_key()
    policy = RetryPolicy(retries=request.retries)
    client = client_factory(key, gateway, timeout_s=request.timeout_s, policy=policy, stop=stop)
    if cache.candidates:
        pending = cache.confirm(client, pending, answers)
    plan = UniversePlan([], [])
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
    if request.dry_run:
        return plan, None
    check_budget(plan, budget)
    check_batch_folders(work_root, plan)
    settings.check_work_room(work_root, plan.estimated_bytes)
    try:
        location = settings.store_location()
        config = RunConfig.of(request, store=location, work_dir=work_root, gateway=gateway)
        if cluster is not None:
            results = fetch_on(cluster, plan, config, store, progress)
        else:
            results = fetch(request, plan, Runtime(config, client, store, stop, policy, progress))
        for result in results:
            answers.add(result)
    except IngestError as exc:  # reported with what it left; the caller exits
        return plan, exc
    return plan, None


def fetch_on(
    cluster: str, plan: UniversePlan, config: RunConfig, store: Store, progress: Progress
) -> Iterator[ProductResult]:
    """--cluster: each group's product as a Dask task (Dask imported only now)."""
    from backend.jobs.engines.cluster import fetch_on_cluster

    if not plan.groups:
        return iter(())
    return fetch_on_cluster(cluster, list(plan.groups), config, store, progress)


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
    from backend.jobs.engines.batchjob import BATCH_SUBDIR

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


def fetch(request: IngestRequest, plan: UniversePlan, runtime: Runtime) -> Iterator[ProductResult]:
    """Download what the decision left to fetch (the caller holds the products' locks): the
    engines' runner, around one runtime; a universe shows one bar for all its parts."""
    from dataclasses import replace

    from backend.jobs.core.progress import OverallProgress
    from backend.jobs.engines.runner import fetch_groups

    if request.is_universe:
        parts = sum(len(group.chunks) * len(group.members) for group in plan.groups)
        runtime = replace(runtime, events=OverallProgress(runtime.events, parts))
    yield from fetch_groups(plan.groups, runtime)
