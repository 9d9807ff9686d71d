"""manifest.json: what each cached file holds, and the decision to skip, adopt or re-download.

The file is rewritten whole (temp file, fsync, rename) under its own lock, so products finished
by concurrent runs never lose each other's entries. It never contains the API key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.jobs.cache import publish, temp_path_for
from backend.jobs.client import STYPE_IN, STYPE_OUT
from backend.jobs.errors import CorruptFileError
from backend.jobs.plan import Product, TimeRange, format_ns

if TYPE_CHECKING:
    from backend.jobs.chunks import Part
    from backend.jobs.request import IngestRequest

MANIFEST_FORMAT = 1
TOOL_PACKAGE = "bento-ingest"


class CacheState(StrEnum):
    OK = "ok"  # final file present and its size matches the manifest
    MISSING = "missing"  # no final file (or an empty one)
    SIZE_MISMATCH = "size mismatch"  # truncated or overwritten since it was recorded
    UNRECORDED = "no manifest entry"  # a file without an entry, e.g. from an older version


def cache_state(file_size: int | None, entry: dict[str, Any] | None) -> CacheState:
    """Pure: what the cache holds for one product, from the file size and its manifest entry."""
    if not file_size:
        return CacheState.MISSING
    if entry is None:
        return CacheState.UNRECORDED
    if entry.get("bytes") != file_size:
        return CacheState.SIZE_MISMATCH
    return CacheState.OK


@dataclass(frozen=True)
class Manifest:
    path: Path

    def read(self) -> dict[str, Any]:
        """The whole manifest; a missing one is empty, an unreadable one is reported."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            content = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{self.path} is not valid JSON ({exc})") from None
        if not isinstance(content, dict) or not isinstance(content.get("products", {}), dict):
            raise CorruptFileError(f"{self.path} does not look like a manifest")
        return content

    def entry(self, product: str) -> dict[str, Any] | None:
        try:
            return self.read().get("products", {}).get(product)
        except CorruptFileError:
            return None

    def record(self, symbol: str, year: int, product: str, entry: dict[str, Any]) -> None:
        from filelock import FileLock

        lock = FileLock(self.path.with_name(".manifest.lock"))
        with lock:
            try:
                content = self.read()
            except CorruptFileError:
                content = {}
            products = content.get("products", {})
            products[product] = entry
            content = {
                "format": MANIFEST_FORMAT,
                "symbol": symbol,
                "year": year,
                "products": dict(sorted(products.items())),
            }
            temp = temp_path_for(self.path)
            try:
                temp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
                publish(temp, self.path)
            finally:
                temp.unlink(missing_ok=True)


def product_entry(
    final: Path,
    *,
    product: Product,
    request: IngestRequest,
    span: TimeRange,
    merged: Any,
    chunking: str,
    parts: list[Part],
) -> dict[str, Any]:
    """One product's manifest entry: the file, its content and the exact request behind it."""

    def stamp(ns: int | None) -> str | None:
        return None if ns is None else format_ns(ns)

    return {
        "file": final.name,
        "bytes": merged.bytes,
        "sha256": merged.sha256,
        "records": merged.records,
        "first_ts_recv": stamp(merged.first_ts_recv),
        "last_ts_recv": stamp(merged.last_ts_recv),
        "request": {
            "dataset": request.dataset,
            "schema": product.schema,
            "symbols": [request.symbol],
            "stype_in": STYPE_IN,
            "stype_out": STYPE_OUT,
            "start": span.start,
            "end": span.end,
            "chunking": chunking,
        },
        "chunks": [
            {
                "start": part.request.span.start,
                "end": part.request.span.end,
                "bytes": part.summary.bytes,
                "sha256": part.summary.sha256,
                "records": part.summary.records,
            }
            for part in sorted(parts, key=lambda part: part.request.span)
        ],
        "versions": versions(),
        "created_at": now_iso(),
    }


def versions() -> dict[str, str]:
    found = {}
    for package in ("databento", "databento-dbn", TOOL_PACKAGE):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
