"""What the local cache holds, and whether it is intact. Local files only: no network, no SDK."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from backend.jobs.cache import (
    DATASETS_SUBDIR,
    DEFAULT_DATASET,
    FINAL_SUFFIX,
    RAW_SUBDIR,
    YearFolder,
    folder_symbol,
)
from backend.jobs.dbnfile import read_metadata, sha256_file
from backend.jobs.decision import CacheKey, CacheState, OnDisk, cache_state
from backend.jobs.errors import CorruptFileError, InvalidInputError
from backend.jobs.plan import DATASET_PATTERN, PRODUCTS


@dataclass(frozen=True)
class CachedProduct:
    dataset: str
    symbol: str
    year: int
    product: str
    path: Path
    bytes: int | None
    records: int | None
    start: str | None
    end: str | None
    sha256: str | None
    manifest: str  # a CacheState value
    problem: str  # what is wrong with the file or its entry, "" when nothing

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "path": str(self.path)}


def _symbol_years(
    data_dir: Path, dataset: str, root: Path, symbol: str | None, year: int | None
) -> Iterator[YearFolder]:
    for symbol_dir in sorted(root.iterdir()):
        name = folder_symbol(symbol_dir.name)
        hidden = symbol_dir.name.startswith(".") or symbol_dir.name == DATASETS_SUBDIR
        if hidden or not symbol_dir.is_dir():
            continue
        if symbol is not None and name != symbol:
            continue
        for year_dir in sorted(symbol_dir.iterdir()):
            wanted = year is None or year_dir.name == str(year)
            if year_dir.is_dir() and year_dir.name.isascii() and year_dir.name.isdigit() and wanted:
                yield YearFolder(data_dir, name, int(year_dir.name), dataset)


def year_folders(
    data_dir: Path, symbol: str | None, year: int | None, dataset: str | None = None
) -> Iterator[YearFolder]:
    """Every cached symbol-year, the default dataset first, then the others by name."""
    root = data_dir / RAW_SUBDIR
    if not root.is_dir():
        return
    if dataset in (None, DEFAULT_DATASET):
        yield from _symbol_years(data_dir, DEFAULT_DATASET, root, symbol, year)
    others = root / DATASETS_SUBDIR
    if not others.is_dir():
        return
    for dataset_dir in sorted(others.iterdir()):
        name = dataset_dir.name
        if DATASET_PATTERN.match(name) and dataset_dir.is_dir() and dataset in (None, name):
            yield from _symbol_years(data_dir, name, dataset_dir, symbol, year)


def cached_products(
    data_dir: Path,
    symbol: str | None = None,
    year: int | None = None,
    dataset: str | None = None,
) -> list[CachedProduct]:
    """Every product file or manifest entry under `data_dir`, each with its state."""
    if not data_dir.is_dir():
        raise InvalidInputError(
            f"data dir {data_dir} does not exist: check --data-dir / DATA_DIR "
            "(nothing has been cached there yet)"
        )
    from backend.jobs.manifest import Manifest

    found = []
    for folder in year_folders(data_dir, symbol, year, dataset):
        content = Manifest.of(folder).load()
        on_disk = {path.name.removesuffix(FINAL_SUFFIX) for path in folder.path.glob("*.dbn.zst")}
        names = on_disk | set(content.entries) | set(content.damaged) | set(content.raw_products)
        for product in sorted(names):
            final = folder.final(product)
            size = final.stat().st_size if final.is_file() else None
            entry = content.entries.get(product)
            facts = OnDisk(
                size=size,
                not_a_file=final.exists() and not final.is_file(),
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
                    path=final,
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


def verify_product(item: CachedProduct) -> str | None:
    """None when the file hashes to its manifest entry and its DBN header decodes; else why not."""
    if item.manifest != CacheState.OK:
        return f"{item.manifest}: {item.problem}" if item.problem else f"{item.manifest}"
    if sha256_file(item.path) != item.sha256:
        return "sha256 differs from the manifest"
    try:
        read_metadata(item.path)
    except CorruptFileError as exc:
        return str(exc)
    return None
