"""What the local cache holds, and whether it is intact. Local files only: no network, no SDK."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from backend.jobs.cache import RAW_SUBDIR, YearFolder, folder_symbol
from backend.jobs.dbnfile import read_metadata, sha256_file
from backend.jobs.errors import CorruptFileError
from backend.jobs.manifest import CacheState, Manifest, cache_state

FINAL_SUFFIX = ".dbn.zst"


@dataclass(frozen=True)
class CachedProduct:
    symbol: str
    year: int
    product: str
    path: Path
    bytes: int | None
    records: int | None
    start: str | None
    end: str | None
    sha256: str | None
    manifest: str  # a CacheState value, or "unreadable manifest"

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "path": str(self.path)}


def year_folders(data_dir: Path, symbol: str | None, year: int | None) -> Iterator[YearFolder]:
    root = data_dir / RAW_SUBDIR
    if not root.is_dir():
        return
    for symbol_dir in sorted(root.iterdir()):
        name = folder_symbol(symbol_dir.name)
        if symbol_dir.name.startswith(".") or not symbol_dir.is_dir():
            continue
        if symbol is not None and name != symbol:
            continue
        for year_dir in sorted(symbol_dir.iterdir()):
            wanted = year is None or year_dir.name == str(year)
            if year_dir.is_dir() and year_dir.name.isdigit() and wanted:
                yield YearFolder(data_dir, name, int(year_dir.name))


def cached_products(
    data_dir: Path, symbol: str | None = None, year: int | None = None
) -> list[CachedProduct]:
    found = []
    for folder in year_folders(data_dir, symbol, year):
        manifest = Manifest(folder.manifest)
        try:
            entries = manifest.read().get("products", {})
            unreadable = False
        except CorruptFileError:
            entries, unreadable = {}, True
        on_disk = {path.name.removesuffix(FINAL_SUFFIX) for path in folder.path.glob("*.dbn.zst")}
        for product in sorted(on_disk | set(entries)):
            final = folder.final(product)
            size = final.stat().st_size if final.is_file() else None
            entry = entries.get(product)
            request = (entry or {}).get("request", {})
            state = "unreadable manifest" if unreadable else str(cache_state(size, entry))
            found.append(
                CachedProduct(
                    symbol=folder.symbol,
                    year=folder.year,
                    product=product,
                    path=final,
                    bytes=size,
                    records=(entry or {}).get("records"),
                    start=request.get("start"),
                    end=request.get("end"),
                    sha256=(entry or {}).get("sha256"),
                    manifest=state,
                )
            )
    return found


def verify_product(item: CachedProduct) -> str | None:
    """None when the file hashes to its manifest entry and its DBN header decodes; else why not."""
    if item.manifest != CacheState.OK:
        return f"manifest state is {item.manifest!r}"
    if sha256_file(item.path) != item.sha256:
        return "sha256 differs from the manifest"
    try:
        read_metadata(item.path)
    except CorruptFileError as exc:
        return str(exc)
    return None
