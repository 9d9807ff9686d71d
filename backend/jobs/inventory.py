"""What the cache holds, and whether it is intact: its store only (a folder or a bucket), never
Databento, no SDK."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from backend.jobs.cache import (
    DATASETS_SUBDIR,
    DEFAULT_DATASET,
    FINAL_SUFFIX,
    RAW_SUBDIR,
    YearFolder,
    folder_symbol,
)
from backend.jobs.dbnfile import read_metadata
from backend.jobs.decision import CacheKey, CacheState, OnDisk, cache_state
from backend.jobs.errors import CorruptFileError, InvalidInputError
from backend.jobs.plan import DATASET_PATTERN, PRODUCTS
from backend.jobs.store import ObjectInfo, Store, sha256_of


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
    if len(rest) != 3 or any(part.startswith(".") for part in rest):
        return None
    symbol, year, name = rest
    if not (year.isascii() and year.isdigit()):
        return None
    return dataset, folder_symbol(symbol), int(year), name


def year_folders(
    store: Store, symbol: str | None, year: int | None, dataset: str | None = None
) -> dict[YearFolder, dict[str, ObjectInfo]]:
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
        YearFolder(Path(), name, when, where, store): found[(where, name, when)]
        for where, name, when in ordered
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
    from backend.jobs.manifest import EMPTY, Manifest

    found = []
    for folder, files in year_folders(store, symbol, year, dataset).items():
        content = Manifest.of(folder).load() if "manifest.json" in files else EMPTY
        on_disk = {name.removesuffix(FINAL_SUFFIX) for name in files if name.endswith(FINAL_SUFFIX)}
        names = on_disk | set(content.entries) | set(content.damaged) | set(content.raw_products)
        for product in sorted(names):
            key = folder.final_key(product)
            info = files.get(f"{product}{FINAL_SUFFIX}")
            if info is None and product in content.entries:  # a folder there, not a file?
                info = store.head(key)
            size = info.size if info is not None and info.is_file else None
            entry = content.entries.get(product)
            facts = OnDisk(
                size=size,
                not_a_file=info is not None and not info.is_file,
                entry=entry,
                damage=content.damage(product),
            )
            schema = PRODUCTS[product].schema if product in PRODUCTS else product.lower()
            state, detail = cache_state(
                facts, CacheKey(folder.dataset, schema, folder.symbol, folder.year)
            )
            if state is CacheState.MISSING and content.damage(product):
                state, detail = CacheState.DAMAGED, content.damage(product) or ""
            found.append(
                CachedProduct(
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
            )
    return found


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
