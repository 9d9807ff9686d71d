"""What the cache holds, and whether it is intact: its store only (a folder or a bucket), never
Databento, no SDK. Also the batch jobs recorded for products still being fetched."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from backend.jobs.cache.decision import CacheKey, CacheState, FileHeader, OnDisk, cache_state
from backend.jobs.cache.entry import EMPTY, ManifestContent
from backend.jobs.cache.layout import (
    DATASETS_SUBDIR,
    DEFAULT_DATASET,
    FINAL_SUFFIX,
    JOB_RECORD_FILE,
    MANIFEST_FILE,
    PARTS_SUBDIR,
    RAW_SUBDIR,
    SymbolYear,
    folder_symbol,
)
from backend.jobs.cache.manifest import Manifest
from backend.jobs.core.dbn import read_metadata
from backend.jobs.core.ranges import DATASET_PATTERN, PRODUCTS
from backend.jobs.errors import CorruptFileError, InvalidInputError
from backend.jobs.store.base import ObjectInfo, Store, sha256_of


@dataclass(frozen=True)
class CachedProduct:
    dataset: str
    symbol: str
    year: int
    product: str
    path: str  # where it is: a local path or an s3:// URL
    key: str  # below the data dir: raw/databento/...
    bytes: int | None
    records: int | None
    start: str | None
    end: str | None
    sha256: str | None
    manifest: str  # a CacheState value
    problem: str  # what is wrong with the file or its entry, "" when nothing

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def folder_of(key: str) -> tuple[str, str, int, str] | None:
    """Pure: (dataset, symbol, year, file name) of a key in the layout; None for anything else
    (working folders, locks, other files)."""
    place = _below_raw(key)
    if place is None:
        return None
    dataset, rest = place
    if len(rest) != 3 or any(part.startswith(".") for part in rest):
        return None
    symbol, year, name = rest
    if not (year.isascii() and year.isdigit()):
        return None
    return dataset, folder_symbol(symbol), int(year), name


def job_record_of(key: str) -> tuple[str, str, int, str] | None:
    """Pure: (dataset, symbol, year, product) of a product's batch job record
    (`{YEAR}/.parts/{PRODUCT}/batch-job.json`); None for any other key."""
    place = _below_raw(key)
    if place is None:
        return None
    dataset, rest = place
    if len(rest) != 5 or rest[2] != PARTS_SUBDIR or rest[4] != JOB_RECORD_FILE:
        return None
    symbol, year, _, product, _ = rest
    if symbol.startswith(".") or product.startswith(".") or not (year.isascii() and year.isdigit()):
        return None
    return dataset, folder_symbol(symbol), int(year), product


def _below_raw(key: str) -> tuple[str, tuple[str, ...]] | None:
    """Pure: the dataset of a key below raw/databento, and the parts below its dataset folder."""
    parts = PurePosixPath(key).parts
    raw = RAW_SUBDIR.parts
    if parts[: len(raw)] != raw:
        return None
    rest = parts[len(raw) :]
    dataset = DEFAULT_DATASET
    if rest and rest[0] == DATASETS_SUBDIR:
        if len(rest) < 2 or not DATASET_PATTERN.match(rest[1]):
            return None
        dataset, rest = rest[1], rest[2:]
    return dataset, rest


def year_folders(
    store: Store, symbol: str | None, year: int | None, dataset: str | None = None
) -> dict[SymbolYear, dict[str, ObjectInfo]]:
    """Every cached symbol-year and its files (one listing), the default dataset first."""
    found: dict[tuple[str, str, int], dict[str, ObjectInfo]] = {}
    for info in store.listing(RAW_SUBDIR.as_posix()):
        place = folder_of(info.key)
        if place is None:
            continue
        where, name, when, file = place
        if symbol not in (None, name) or year not in (None, when) or dataset not in (None, where):
            continue
        found.setdefault((where, name, when), {})[file] = info
    ordered = sorted(found, key=lambda k: (k[0] != DEFAULT_DATASET, k[0], k[1], k[2]))
    return {
        SymbolYear(name, when, where): found[(where, name, when)] for where, name, when in ordered
    }


def cached_products(
    store: Store,
    symbol: str | None = None,
    year: int | None = None,
    dataset: str | None = None,
) -> list[CachedProduct]:
    """Every product file or manifest entry in the store, each with its state.

    Sizes come from the listing; only manifests are read.
    """
    if not store.exists():
        raise InvalidInputError(
            f"data dir {store.where('').rstrip('/')} does not exist: check --data-dir / DATA_DIR "
            "(nothing has been cached there yet)"
        )
    found = []
    now_ns = time.time_ns()
    for folder, files in year_folders(store, symbol, year, dataset).items():
        content = Manifest.of(store, folder).load() if MANIFEST_FILE in files else EMPTY
        on_disk = {name.removesuffix(FINAL_SUFFIX) for name in files if name.endswith(FINAL_SUFFIX)}
        names = on_disk | set(content.entries) | set(content.damaged) | set(content.raw_products)
        found += [
            cached_product(store, folder, product, files, content, now_ns)
            for product in sorted(names)
        ]
    return found


def cached_product(  # noqa: PLR0917  one product, as the listing and its manifest give it
    store: Store,
    folder: SymbolYear,
    product: str,
    files: dict[str, ObjectInfo],
    content: ManifestContent,
    now_ns: int,
) -> CachedProduct:
    """One product of a folder: its file as listed, its manifest entry, and its state (a file
    with no entry is judged by its own header)."""
    key = folder.final_key(product)
    info = files.get(f"{product}{FINAL_SUFFIX}")
    if info is None and product in content.entries:  # a folder there, not a file?
        info = store.head(key)
    size = info.size if info is not None and info.is_file else None
    entry = content.entries.get(product)
    damage = content.damage(product)
    header, unreadable = (
        file_header(store, key) if size and entry is None and not damage else (None, None)
    )
    facts = OnDisk(
        size=size,
        not_a_file=info is not None and not info.is_file,
        entry=entry,
        damage=damage,
        header=header,
        header_problem=unreadable,
    )
    schema = PRODUCTS[product].schema if product in PRODUCTS else product.lower()
    cache_key = CacheKey(folder.dataset, schema, folder.symbol, folder.year)
    state, detail = cache_state(facts, cache_key, now_ns=now_ns)
    if state is CacheState.MISSING and damage:
        state, detail = CacheState.DAMAGED, damage
    return CachedProduct(
        dataset=folder.dataset,
        symbol=folder.symbol,
        year=folder.year,
        product=product,
        path=store.where(key),
        key=key,
        bytes=size,
        records=entry.records if entry else None,
        start=entry.request.start if entry else None,
        end=entry.request.end if entry else None,
        sha256=entry.sha256 if entry else None,
        manifest=str(state),
        problem=detail,
    )


def file_header(store: Store, key: str) -> tuple[FileHeader | None, str | None]:
    """A file's own DBN header (its first frame only), or why it cannot be read."""
    try:
        with store.reader(key) as source:
            return FileHeader.of(read_metadata(source)), None
    except CorruptFileError as exc:
        return None, str(exc)


@dataclass(frozen=True)
class RecordedJob:
    """A batch job recorded for a product still being fetched, as its record says (no request)."""

    dataset: str
    symbol: str
    year: int
    product: str
    path: str  # of the record: a local path or an s3:// URL
    job_id: str | None  # None: submitting (the answer to the submit may have been lost)
    state: str  # submitting, submitted, failed validation, unreadable
    problem: str  # why it failed validation, or why the record cannot be read; "" otherwise
    submitted_since: str | None
    age_s: int | None  # seconds since the submit was sent
    cost_usd: float | None
    symbols: int | None  # how many symbols the job asks for (a group's job serves them all)
    start: str | None
    end: str | None

    def as_json(self) -> dict[str, object]:
        return asdict(self)


SUBMITTING, SUBMITTED, FAILED, UNREADABLE = (
    "submitting",
    "submitted",
    "failed validation",
    "unreadable",
)


def job_facts(raw: Any, now_ns: int) -> dict[str, Any]:
    """Pure: state, problem, id, age, cost and request of a job record, read defensively (a
    record of another version or a damaged one is shown as unreadable, never a crash)."""
    if not isinstance(raw, dict):
        return {"state": UNREADABLE, "problem": "not a JSON object"}
    request = raw.get("request") if isinstance(raw.get("request"), dict) else {}
    job_id = raw.get("job_id") or None
    failed = raw.get("failed")
    state = FAILED if failed else SUBMITTED if job_id else SUBMITTING
    since = raw.get("submitted_since")
    age = None
    if isinstance(since, str) and since:
        try:
            moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
            age = max(0, round(now_ns / 1e9 - moment.timestamp()))
        except ValueError:
            age = None
    cost = raw.get("cost_usd")
    symbols = request.get("symbols")
    count = (
        len([name for name in symbols.split(",") if name.strip()])
        if isinstance(symbols, str)
        else len(symbols)
        if isinstance(symbols, list)
        else None
    )
    return {
        "state": state,
        "problem": str(failed) if failed else "",
        "job_id": str(job_id) if job_id else None,
        "submitted_since": since if isinstance(since, str) and since else None,
        "age_s": age,
        "cost_usd": float(cost) if isinstance(cost, int | float) else None,
        "symbols": count,
        "start": str(request["start"]) if request.get("start") else None,
        "end": str(request["end"]) if request.get("end") else None,
    }


def recorded_jobs(
    store: Store,
    symbol: str | None = None,
    year: int | None = None,
    dataset: str | None = None,
) -> list[RecordedJob]:
    """Every batch job record in the store (one per member product), by dataset, symbol, year.

    Only the records are read: the jobs' states at Databento are not asked for.
    """
    now_ns = time.time_ns()
    found = []
    for info in store.listing(RAW_SUBDIR.as_posix()):
        place = job_record_of(info.key)
        if place is None:
            continue
        where, name, when, product = place
        if symbol not in (None, name) or year not in (None, when) or dataset not in (None, where):
            continue
        try:
            read = store.read(info.key)
            if read is None:
                continue  # gone since the listing: the product was published meanwhile
            facts = job_facts(json.loads(read[0]), now_ns)
        except (OSError, ValueError) as exc:
            facts = {"state": UNREADABLE, "problem": str(exc)}
        blank = dict.fromkeys(
            ("job_id", "submitted_since", "age_s", "cost_usd", "symbols", "start", "end")
        )
        found.append(
            RecordedJob(where, name, when, product, store.where(info.key), **(blank | facts))
        )
    return sorted(
        found, key=lambda j: (j.dataset != DEFAULT_DATASET, j.dataset, j.symbol, j.year, j.product)
    )


def status_json(
    store: Store, items: list[CachedProduct], jobs: list[RecordedJob]
) -> list[dict[str, object]]:
    """`status --json`: each product with its recorded batch job (or null); a product that has
    only a job so far is listed too, as missing."""
    by_product = {(j.dataset, j.symbol, j.year, j.product): j for j in jobs}
    listed = []
    for item in items:
        job = by_product.pop((item.dataset, item.symbol, item.year, item.product), None)
        listed.append({**item.as_json(), "batch_job": job.as_json() if job else None})
    for job in by_product.values():
        key = SymbolYear(job.symbol, job.year, job.dataset).final_key(job.product)
        waiting = CachedProduct(
            dataset=job.dataset,
            symbol=job.symbol,
            year=job.year,
            product=job.product,
            path=store.where(key),
            key=key,
            bytes=None,
            records=None,
            start=None,
            end=None,
            sha256=None,
            manifest=str(CacheState.MISSING),
            problem="",
        )
        listed.append({**waiting.as_json(), "batch_job": job.as_json()})
    return sorted(listed, key=_listed_order)


def _listed_order(item: dict[str, Any]) -> tuple[bool, str, str, int, str]:
    """The default dataset first, then dataset, symbol, year and product."""
    dataset = str(item["dataset"])
    return (
        dataset != DEFAULT_DATASET,
        dataset,
        str(item["symbol"]),
        int(item["year"]),
        str(item["product"]),
    )


def verify_product(store: Store, item: CachedProduct) -> str | None:
    """None when the file hashes to its manifest entry and its DBN header decodes; else why not.

    The object is streamed through the hash: no local copy, whatever its size.
    """
    if item.manifest != CacheState.OK:
        return f"{item.manifest}: {item.problem}" if item.problem else f"{item.manifest}"
    if sha256_of(store, item.key) != item.sha256:
        return "sha256 differs from the manifest"
    try:
        with store.reader(item.key) as source:
            read_metadata(source)
    except CorruptFileError as exc:
        return str(exc)
    return None
