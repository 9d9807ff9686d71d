"""manifest.json, read and written through the cache's store (its content: cache/entry.py).

The file is rewritten whole and atomically, only if nobody wrote it since it was read (a
conditional write through its store), so products finished by concurrent runs never lose each
other's entries. It never contains the API key.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backend.jobs.cache.entry import (
    EMPTY,
    MANIFEST_FORMAT,
    BatchRecord,
    ChunkRecord,
    FileFacts,
    ManifestContent,
    ManifestEntry,
    RecordedRequest,
    parse_manifest,
)
from backend.jobs.core.ranges import format_ns, now_iso
from backend.jobs.errors import IngestError
from backend.jobs.store.base import ConflictError

if TYPE_CHECKING:
    from backend.jobs.cache.layout import SymbolYear
    from backend.jobs.store.base import Store

RECORD_ATTEMPTS = 20
TOOL_PACKAGE = "bento-ingest"


@dataclass(frozen=True)
class Manifest:
    """The manifest of one dataset-symbol-year folder, read and written through its store."""

    store: Store
    key: str
    dataset: str
    symbol: str
    year: int

    @classmethod
    def of(cls, store: Store, place: SymbolYear) -> Manifest:
        return cls(store, place.manifest_key, place.dataset, place.symbol, place.year)

    def load(self) -> ManifestContent:
        """The manifest as it is now; a missing one is empty."""
        return self._parse(self.store.read(self.key))

    def _parse(self, found: tuple[bytes, str] | None) -> ManifestContent:
        if found is None:
            return EMPTY
        try:
            text = found[0].decode("utf-8")
        except UnicodeDecodeError:
            return ManifestContent({}, {}, {}, "manifest.json is not text")
        return parse_manifest(text)

    def record(self, product: str, entry: ManifestEntry) -> None:
        """Add or replace one product's entry; other products' entries are kept as they are.

        Optimistic: read, merge, write only if nobody wrote in between (a lock beside a local
        file, `If-Match` on the ETag in a bucket); on a conflict, read again and merge again,
        so products finished by different runs or machines keep each other's entries.
        """
        for _ in range(RECORD_ATTEMPTS):
            found = self.store.read(self.key)
            current = self._parse(found)
            products = {} if current.problem else dict(current.raw_products)
            products[product] = entry.as_json()
            content = {
                "format": MANIFEST_FORMAT,
                "dataset": self.dataset,
                "symbol": self.symbol,
                "year": self.year,
                "products": dict(sorted(products.items())),
            }
            data = (json.dumps(content, indent=2) + "\n").encode()
            try:
                self.store.write(self.key, data, expected=found[1] if found else None)
            except ConflictError:
                continue
            return
        raise IngestError(
            f"{self.store.where(self.key)} kept changing under {RECORD_ATTEMPTS} attempts to "
            "record a product: run the same command again"
        )


def product_entry(
    file: str,
    *,
    request: RecordedRequest,
    content: FileFacts,
    chunks: Iterable[ChunkRecord] = (),
    engine: str = "stream",
    batch: BatchRecord | None = None,
) -> ManifestEntry:
    """One product's manifest entry: the file (its name), its content and the exact request
    behind it, its chunks in time order.

    Files this tool writes are framed canonically; an adopted file is described as found.
    """
    from backend.jobs.core.dbn import FRAMING

    def stamp(ns: int | None) -> str | None:
        return None if ns is None else format_ns(ns)

    return ManifestEntry(
        file=file,
        bytes=content.bytes,
        sha256=content.sha256,
        records=content.records,
        first_ts_recv=stamp(content.first_ts_recv),
        last_ts_recv=stamp(content.last_ts_recv),
        request=request,
        chunks=tuple(sorted(chunks, key=lambda chunk: chunk.span)),
        versions=dict(versions()),
        created_at=now_iso(),
        engine=engine,
        batch=batch,
        framing="" if engine == "adopted" else FRAMING,
    )


@functools.cache
def versions() -> dict[str, str]:
    """The versions that wrote a file, read once per process (importlib.metadata parses every
    installed distribution's metadata: ~2 ms a call, once per product otherwise)."""
    from importlib.metadata import PackageNotFoundError, version  # slow to import: only here

    import zstandard

    found = {}
    for package in ("databento", "databento-dbn", TOOL_PACKAGE):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    # the same records give the same bytes only with the same zstd: which one wrote them
    found["zstandard"] = zstandard.__version__
    found["libzstd"] = ".".join(str(part) for part in zstandard.ZSTD_VERSION)
    return found
