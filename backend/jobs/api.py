"""The public Python API: open verified cached files, read their lineage, fill the cache.

Everything else in `backend.jobs` is internal; this module and the errors it exports are the
door downstream code uses (reference: docs/api.md).

    from backend.jobs.api import open_cached, manifest_entry

    store = open_cached("AAPL", 2023, "trades")          # the file, checked against its manifest
    df = store.to_df()
    lineage = manifest_entry("AAPL", 2023, "trades")     # sha256, records, the request, engine

`data_dir=None` means what the CLI means: `DATA_DIR`, else the repository's `data/`; a folder
or `s3://BUCKET/PREFIX`. Settings come from the environment exactly as the CLI reads them
(`settings.py`). Errors are raised, typed, never turned into exits; messages are one line
naming what to do. Logging goes through loguru's `logger`, as the CLI's does (silence it with
`logger.disable("backend")`); nothing is printed and no progress is shown unless asked.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from backend.jobs.cache.layout import DEFAULT_DATASET, SymbolYear
from backend.jobs.cache.manifest import Manifest
from backend.jobs.core.dbn import sha256_file
from backend.jobs.core.files import publish, temp_path_for
from backend.jobs.core.progress import NullProgress, Progress
from backend.jobs.core.ranges import (
    PRODUCTS,
    Product,
    normalize_dataset,
    parse_chunking,
    parse_products,
)
from backend.jobs.core.request import DEFAULT_GROUP_SIZE, DEFAULT_TIMEOUT_S, ProductResult
from backend.jobs.core.units import (
    DEFAULT_BATCH_ABOVE,
    DEFAULT_BATCH_TIMEOUT,
    parse_duration,
    parse_engine,
    parse_size,
)
from backend.jobs.core.universe import parse_year, symbol_option
from backend.jobs.errors import (
    EXIT_CREDENTIALS,
    EXIT_FAILED,
    BudgetExceededError,
    CorruptFileError,
    CredentialsError,
    DiskFullError,
    IngestError,
    IntegrityError,
    InvalidInputError,
    JobGoneError,
    NoDataError,
    NotCachedError,
    RunStoppedError,
    TransientError,
    combined_exit_code,
)
from backend.jobs.settings import Settings
from backend.jobs.store import open_store

if TYPE_CHECKING:
    import databento

    from backend.jobs.cache.entry import ManifestEntry
    from backend.jobs.core.request import IngestRequest
    from backend.jobs.store.base import Store

__all__ = [
    "BudgetError",
    "BudgetExceededError",
    "CorruptFileError",
    "CredentialsError",
    "DiskFullError",
    "IngestError",
    "IntegrityError",
    "InvalidInputError",
    "JobGoneError",
    "NoDataError",
    "NotCachedError",
    "ProductResult",
    "Progress",
    "RunStoppedError",
    "TransientError",
    "cached_path",
    "ingest",
    "manifest_entry",
    "open_cached",
]

BudgetError = BudgetExceededError  # the estimated cost exceeds max_cost
READ_CACHE_SUBDIR = "read-cache"  # below the work dir: verified local copies of a bucket's files
READ_SIZE = 1 << 20
ERROR_OF_EXIT = {EXIT_CREDENTIALS: CredentialsError, EXIT_FAILED: IngestError}


def cached_path(
    symbol: str,
    year: int | str,
    product: str = "trades",
    *,
    dataset: str = DEFAULT_DATASET,
    data_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    verify: bool = True,
) -> Path:
    """The local path of a cached symbol-year-product, checked against its manifest entry.

    With `verify` the file is hashed (sha256) and its DBN header decoded on every call. For an
    `s3://` data dir it is a local copy in a read cache under the work dir (`work_dir`, else
    `~/.cache/bento-ingest/work` or under `XDG_CACHE_HOME`): downloaded once, checked against
    the manifest's sha256, and reused while it still matches (a new file in the bucket, or a
    damaged copy, is downloaded again).

    Raises `NotCachedError` (with the command that fetches it) when there is no file or no
    manifest entry for it, `IntegrityError` when the file does not hash to its entry or does
    not decode, `InvalidInputError` for a malformed symbol, year, product or dataset.
    """
    cached = _locate(symbol, year, product, dataset=dataset, data_dir=data_dir, work_dir=work_dir)
    if cached.settings.data_url is None:
        path = (cached.settings.data_dir / cached.key).absolute()
        if verify:
            _check(path, cached)
        return path
    return _local_copy(cached, verify=verify)


def open_cached(
    symbol: str,
    year: int | str,
    product: str = "trades",
    *,
    dataset: str = DEFAULT_DATASET,
    data_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    verify: bool = True,
) -> databento.DBNStore:
    """`databento.DBNStore.from_file` of `cached_path(...)`: the verified cached records.

    Raises what `cached_path` raises; `IntegrityError` also when the SDK cannot read the file.
    """
    import databento
    from databento.common.error import BentoError

    path = cached_path(
        symbol, year, product, dataset=dataset, data_dir=data_dir, work_dir=work_dir, verify=verify
    )
    try:
        return databento.DBNStore.from_file(path)
    except (ValueError, BentoError) as exc:
        expected = manifest_entry(symbol, year, product, dataset=dataset, data_dir=data_dir)
        raise IntegrityError(
            f"{path} does not decode ({exc}); fetch it again",
            path=str(path),
            expected=str(expected["sha256"]),
            actual=sha256_file(path),
        ) from None


def manifest_entry(
    symbol: str,
    year: int | str,
    product: str = "trades",
    *,
    dataset: str = DEFAULT_DATASET,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The manifest entry of a cached file, to record as a derivation's input lineage.

    The entry as `manifest.json` holds it (`file`, `bytes`, `sha256`, `records`,
    `first_ts_recv`, `last_ts_recv`, `request`, `chunks`, `versions`, `engine`, `batch` for a
    batch job...), plus `job_id` (the batch job's, else None) and `location` (the file in the
    data dir: a path or an s3:// URL). Reads the manifest only: the file is not hashed
    (`cached_path` does that). Raises `NotCachedError` when there is no file or entry.
    """
    cached = _locate(symbol, year, product, dataset=dataset, data_dir=data_dir, work_dir=None)
    entry = cached.entry.as_json()
    entry["job_id"] = cached.entry.batch.job_id if cached.entry.batch else None
    entry["location"] = cached.store.where(cached.key)
    return entry


def ingest(
    symbols: str | Iterable[str],
    years: int | Iterable[int],
    products: str | Iterable[str] = ("trades", "tbbo"),
    *,
    dataset: str = DEFAULT_DATASET,
    data_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    gateway: str | None = None,
    force: bool = False,
    verify: bool = False,
    chunk: str = "auto",
    jobs: int = 4,
    retries: int = 5,
    timeout: float = DEFAULT_TIMEOUT_S,
    lock_timeout: float = 600.0,
    engine: str | None = None,
    batch_above: str = DEFAULT_BATCH_ABOVE,
    batch_timeout: str = DEFAULT_BATCH_TIMEOUT,
    group_size: int = DEFAULT_GROUP_SIZE,
    max_cost: float | None = None,
    cluster: str | None = None,
    progress: Progress | None = None,
) -> list[ProductResult]:
    """The work of `bento-ingest data` (same options as its flags, same cache, same checks):
    one `ProductResult` per symbol-year-product, cached ("skipped") or "downloaded".

    Raises instead of exiting: `CredentialsError` (no key, or refused), `BudgetExceededError`
    (alias `BudgetError`) above `max_cost`, `InvalidInputError` for bad options or a symbol-year
    the dataset cannot answer (every one named), `IngestError` and its subclasses for a failed
    download (what finished is kept: call again to resume). `progress` is told of chunks and
    bytes as they arrive (a `Progress`; nothing by default).
    """
    from backend.jobs.ingest import run_ingest

    settings = Settings.from_env(
        gateway=gateway,
        data_dir=_text(data_dir),
        max_cost=max_cost,
        work_dir=_text(work_dir),
        cluster=cluster,
    )
    request = _request(
        symbols,
        years,
        products,
        dataset=dataset,
        force=force,
        verify=verify,
        chunk=chunk,
        jobs=jobs,
        retries=retries,
        timeout=timeout,
        lock_timeout=lock_timeout,
        engine=engine,
        batch_above=batch_above,
        batch_timeout=batch_timeout,
        group_size=group_size,
    )
    report = run_ingest(request, settings, progress=progress or NullProgress())
    if report.error is not None:
        raise report.error
    if report.plan.failures:
        failures = report.plan.failures
        code = combined_exit_code(failure.exit_code for failure in failures)
        error = ERROR_OF_EXIT.get(code, InvalidInputError)
        raise error("; ".join(f"{failure.name}: {failure.message}" for failure in failures))
    return report.results


# Where a cached file is, and its checks


@dataclass(frozen=True)
class Cached:
    """A cached product found: its store, its key there, its manifest entry, the command that
    fetches it again."""

    settings: Settings
    store: Store
    key: str
    entry: ManifestEntry
    command: str


def _locate(
    symbol: str,
    year: int | str,
    product: str,
    *,
    dataset: str,
    data_dir: str | Path | None,
    work_dir: str | Path | None,
) -> Cached:
    """The product's file and manifest entry in the data dir (a HEAD and one small read)."""
    settings = Settings.from_env(data_dir=_text(data_dir), work_dir=_text(work_dir))
    place = SymbolYear(
        symbol_option(symbol, "symbol"), parse_year(str(year), "year"), normalize_dataset(dataset)
    )
    chosen = _one_product(product)
    command = fetch_command(place, chosen, settings)
    store = open_store(settings.store_location())
    key = place.final_key(chosen.name)
    content = Manifest.of(store, place).load()
    entry = content.entries.get(chosen.name)
    label = f"{place.symbol} {place.year} {chosen.name} ({place.dataset})"
    if store.head(key) is None:
        raise NotCachedError(
            f"{label} is not cached in {store.where(key)}: fetch it with `{command}`", command
        )
    if entry is None:
        why = content.damage(chosen.name) or "no manifest entry"
        raise NotCachedError(
            f"{store.where(key)} is not recorded in its manifest ({why}): record or fetch it "
            f"with `{command}`",
            command,
        )
    return Cached(settings, store, key, entry, command)


def fetch_command(place: SymbolYear, product: Product, settings: Settings) -> str:
    """The command that fetches a symbol-year-product into the same data dir."""
    words = ["bento-ingest", "data", "--symbol", place.symbol, "--year", str(place.year)]
    words += ["--products", product.name.lower()]
    if place.dataset != DEFAULT_DATASET:
        words += ["--dataset", place.dataset]
    if settings.data_source == "--data-dir":
        words += ["--data-dir", settings.data_url or str(settings.data_dir)]
    return shlex.join(words)


def _one_product(text: str) -> Product:
    product = PRODUCTS.get(text.strip().upper())
    if product is None:
        raise InvalidInputError(
            f"product {text!r} is not one of {', '.join(PRODUCTS).lower()}: pick one, e.g. trades"
        )
    return product


def _check(path: Path, cached: Cached, *, where: str | None = None) -> None:
    """The file hashes to its entry and its DBN header decodes, else IntegrityError."""
    from backend.jobs.core.dbn import read_metadata

    name, expected = where or str(path), cached.entry.sha256
    actual = sha256_file(path)
    if actual != expected:
        raise IntegrityError(
            f"{name} does not match its manifest: sha256 {actual}, the manifest says {expected}; "
            f"fetch it again with `{cached.command} --verify`",
            path=name,
            expected=expected,
            actual=actual,
        )
    try:
        read_metadata(path)
    except CorruptFileError as exc:
        raise IntegrityError(
            f"{name} does not decode ({exc}); fetch it again with `{cached.command} --verify`",
            path=name,
            expected=expected,
            actual=actual,
        ) from None


def _local_copy(cached: Cached, *, verify: bool) -> Path:
    """A bucket's file as a local copy under the work dir: reused while it matches the
    manifest entry (hashed with `verify`, else by size), else downloaded and checked."""
    work_root = cached.settings.work_root()
    cached.settings.check_work_root(work_root)
    copy = work_root / READ_CACHE_SUBDIR / cached.key
    if copy.is_file():
        if _copy_matches(copy, cached.entry, verify=verify):
            return copy
        logger.warning("{} no longer matches its manifest entry; downloading it again", copy)
    copy.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_for(copy)
    try:
        with cached.store.reader(cached.key) as source, temp.open("wb") as sink:
            while block := source.read(READ_SIZE):
                sink.write(block)
        _check(temp, cached, where=cached.store.where(cached.key))
        publish(temp, copy)
    finally:
        temp.unlink(missing_ok=True)
    logger.info("copied {} to {}", cached.store.where(cached.key), copy)
    return copy


def _copy_matches(copy: Path, entry: ManifestEntry, *, verify: bool) -> bool:
    if copy.stat().st_size != entry.bytes:
        return False
    return not verify or sha256_file(copy) == entry.sha256


def _text(value: str | Path | None) -> str | None:
    return None if value is None else str(value)


# The request of `ingest`, checked as the CLI checks its flags


def _request(
    symbols: str | Iterable[str],
    years: int | Iterable[int],
    products: str | Iterable[str],
    *,
    dataset: str,
    force: bool,
    verify: bool,
    chunk: str,
    jobs: int,
    retries: int,
    timeout: float,
    lock_timeout: float,
    engine: str | None,
    batch_above: str,
    batch_timeout: str,
    group_size: int,
) -> IngestRequest:
    """The options of `ingest` as one request; bad input raises InvalidInputError."""
    from backend.jobs.core.request import IngestRequest

    names = [symbols] if isinstance(symbols, str) else list(symbols)
    calendar = [years] if isinstance(years, int | str) else list(years)
    wanted = [products] if isinstance(products, str) else list(products)
    if not names or not calendar:
        raise InvalidInputError("ingest needs at least one symbol and one year")
    for name, value, low, high in (
        ("jobs", jobs, 1, 32),
        ("retries", retries, 0, 20),
        ("timeout", timeout, 1, 600),
        ("group_size", group_size, 1, 2000),
        ("lock_timeout", lock_timeout, 0, float("inf")),
    ):
        if not low <= value <= high:
            raise InvalidInputError(f"{name}={value!r} is outside {low}..{high}")
    return IngestRequest(
        symbols=tuple(dict.fromkeys(symbol_option(name, "symbols") for name in names)),
        years=tuple(dict.fromkeys(parse_year(str(year), "years") for year in calendar)),
        products=parse_products(",".join(wanted)),
        dataset=normalize_dataset(dataset),
        force=force,
        verify=verify,
        chunking=parse_chunking(chunk, "chunk"),
        jobs=jobs,
        retries=retries,
        timeout_s=timeout,
        lock_timeout_s=lock_timeout,
        engine=parse_engine(engine) if engine else None,
        batch_above=parse_size(batch_above),
        batch_timeout_s=parse_duration(batch_timeout),
        group_size=group_size,
    )
