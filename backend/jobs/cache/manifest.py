"""manifest.json: what each cached file holds, read through one validating parser.

The file is rewritten whole and atomically, only if nobody wrote it since it was read (a
conditional write through its store), so products finished by concurrent runs never lose each
other's entries. It never contains the API key. An entry of
the wrong shape is data, not a crash: it is reported as damaged, and the products it describes
are treated as unrecorded (validated again, then adopted or fetched).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.jobs.core.ranges import TimeRange, format_ns, parse_timestamp_ns
from backend.jobs.errors import IngestError
from backend.jobs.store.base import ConflictError

if TYPE_CHECKING:
    from backend.jobs.cache.layout import YearFolder
    from backend.jobs.engines.parts import Part
    from backend.jobs.store.base import Store

MANIFEST_FORMAT = 1
RECORD_ATTEMPTS = 20
TOOL_PACKAGE = "bento-ingest"
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DamagedEntryError(ValueError):
    """A manifest entry that does not have the shape this version writes."""


@dataclass(frozen=True)
class RecordedRequest:
    """The request a cached file answers: the cache key."""

    dataset: str
    schema: str
    symbols: tuple[str, ...]
    stype_in: str
    stype_out: str
    start: str
    end: str
    chunking: str

    @property
    def span(self) -> TimeRange:
        return TimeRange(parse_timestamp_ns(self.start), parse_timestamp_ns(self.end))


@dataclass(frozen=True)
class ChunkRecord:
    start: str
    end: str
    bytes: int
    sha256: str
    records: int


@dataclass(frozen=True)
class JobFileRecord:
    filename: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class BatchRecord:
    """The batch job a file was built from: free to download again until it expires."""

    job_id: str
    cost_usd: float | None  # the whole job's (all its symbols), billed once at submit
    symbols: tuple[str, ...]
    split_duration: str
    files: tuple[JobFileRecord, ...]  # every file of the job as served, support files too

    @classmethod
    def parse(cls, raw: object) -> BatchRecord:
        item = _mapping(raw, "batch")
        files = item.get("files")
        symbols = item.get("symbols")
        cost = item.get("cost_usd")
        if not isinstance(files, list):
            raise DamagedEntryError("batch.files is not a list")
        if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
            raise DamagedEntryError("batch.symbols is not a list of strings")
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float)):
            raise DamagedEntryError("batch.cost_usd is not a number")
        return cls(
            job_id=_text(item, "job_id", "batch."),
            cost_usd=None if cost is None else float(cost),
            symbols=tuple(symbols),
            split_duration=_text(item, "split_duration", "batch."),
            files=tuple(
                JobFileRecord(
                    filename=_text(entry, "filename", "batch.files."),
                    bytes=_count(entry, "bytes", "batch.files."),
                    sha256=_sha256(entry, "sha256", "batch.files."),
                )
                for entry in (_mapping(raw_file, "a batch file") for raw_file in files)
            ),
        )


@dataclass(frozen=True)
class ManifestEntry:
    file: str
    bytes: int
    sha256: str
    records: int
    first_ts_recv: str | None
    last_ts_recv: str | None
    request: RecordedRequest
    chunks: tuple[ChunkRecord, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    engine: str = "stream"  # stream (get_range requests), batch (one job), adopted
    batch: BatchRecord | None = None
    # "utc-day": the bytes depend only on the metadata and records (dbnfile.DayFrames), given
    # the zstd of `versions`; "" for a file adopted as found or recorded by an older version.
    framing: str = ""

    @classmethod
    def parse(cls, raw: object) -> ManifestEntry:
        """Validate one entry as read from JSON; DamagedEntryError says what is wrong."""
        item = _mapping(raw, "entry")
        request = _mapping(item.get("request"), "request")
        chunks = item.get("chunks", [])
        if not isinstance(chunks, list):
            raise DamagedEntryError("chunks is not a list")
        symbols = request.get("symbols")
        if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
            raise DamagedEntryError("request.symbols is not a list of strings")
        versions = item.get("versions", {})
        if not isinstance(versions, dict):
            raise DamagedEntryError("versions is not an object")
        framing = item.get("framing", "")
        if not isinstance(framing, str):
            raise DamagedEntryError("framing is not a string")
        entry = cls(
            file=_text(item, "file"),
            bytes=_count(item, "bytes"),
            sha256=_sha256(item, "sha256"),
            records=_count(item, "records"),
            first_ts_recv=_optional_text(item, "first_ts_recv"),
            last_ts_recv=_optional_text(item, "last_ts_recv"),
            request=RecordedRequest(
                dataset=_text(request, "dataset", "request."),
                schema=_text(request, "schema", "request."),
                symbols=tuple(symbols),
                stype_in=_text(request, "stype_in", "request."),
                stype_out=_text(request, "stype_out", "request."),
                start=_timestamp(request, "start", "request."),
                end=_timestamp(request, "end", "request."),
                chunking=_text(request, "chunking", "request."),
            ),
            chunks=tuple(_chunk(chunk) for chunk in chunks),
            versions={str(key): str(value) for key, value in versions.items()},
            created_at=str(item.get("created_at", "")),
            engine=str(item.get("engine", "stream")),
            batch=BatchRecord.parse(item["batch"]) if item.get("batch") is not None else None,
            framing=framing,
        )
        if entry.request.span.start_ns >= entry.request.span.end_ns:
            raise DamagedEntryError("request.start is not before request.end")
        return entry

    def as_json(self) -> dict[str, Any]:
        content = asdict(self)
        content["request"]["symbols"] = list(self.request.symbols)
        content["chunks"] = [asdict(chunk) for chunk in self.chunks]
        if self.batch is None:
            del content["batch"]
        else:
            content["batch"]["symbols"] = list(self.batch.symbols)
            content["batch"]["files"] = [asdict(item) for item in self.batch.files]
        return content


def _mapping(raw: object, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise DamagedEntryError(f"{what} is a {type(raw).__name__}, not an object")
    return raw


def _text(item: dict[str, Any], key: str, prefix: str = "") -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise DamagedEntryError(f"{prefix}{key} is missing or not a string")
    return value


def _optional_text(item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise DamagedEntryError(f"{key} is not a string")
    return value


def _count(item: dict[str, Any], key: str, prefix: str = "") -> int:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DamagedEntryError(f"{prefix}{key} is missing or not a whole number >= 0")
    return value


def _sha256(item: dict[str, Any], key: str, prefix: str = "") -> str:
    value = item.get(key)
    if not isinstance(value, str) or not SHA256.match(value):
        raise DamagedEntryError(f"{prefix}{key} is missing or not a sha256 hex digest")
    return value


def _timestamp(item: dict[str, Any], key: str, prefix: str = "") -> str:
    value = _text(item, key, prefix)
    try:
        parse_timestamp_ns(value)
    except ValueError:
        raise DamagedEntryError(f"{prefix}{key} {value!r} is not a timestamp") from None
    return value


def _chunk(raw: object) -> ChunkRecord:
    item = _mapping(raw, "a chunk")
    return ChunkRecord(
        start=_timestamp(item, "start", "chunk."),
        end=_timestamp(item, "end", "chunk."),
        bytes=_count(item, "bytes", "chunk."),
        sha256=_sha256(item, "sha256", "chunk."),
        records=_count(item, "records", "chunk."),
    )


@dataclass(frozen=True)
class ManifestContent:
    """A manifest as read: valid entries, damaged ones (product -> why), and the raw JSON."""

    entries: dict[str, ManifestEntry]
    damaged: dict[str, str]
    raw_products: dict[str, Any]
    problem: str | None = None  # the whole file is unusable: why

    def damage(self, product: str) -> str | None:
        if self.problem:
            return self.problem
        return self.damaged.get(product)


EMPTY = ManifestContent({}, {}, {})


def parse_manifest(text: str, name: str = "manifest.json") -> ManifestContent:
    """Pure: the manifest's text -> valid and damaged entries; never raises on bad content."""
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        return ManifestContent({}, {}, {}, f"{name} is not valid JSON: {exc}")
    if not isinstance(content, dict) or not isinstance(content.get("products", {}), dict):
        return ManifestContent({}, {}, {}, f"{name} is not a manifest")
    products = content.get("products", {})
    if content.get("format") != MANIFEST_FORMAT:
        problem = (
            f"damaged manifest ({name} has format {content.get('format')!r}; this version reads 1)"
        )
        return ManifestContent({}, {}, products, problem)
    entries, damaged = {}, {}
    for product, raw in products.items():
        try:
            entries[product] = ManifestEntry.parse(raw)
        except DamagedEntryError as exc:
            damaged[product] = str(exc)
    return ManifestContent(entries, damaged, products)


@dataclass(frozen=True)
class Manifest:
    """The manifest of one dataset-symbol-year folder, read and written through its store."""

    store: Store
    key: str
    dataset: str
    symbol: str
    year: int

    @classmethod
    def of(cls, folder: YearFolder) -> Manifest:
        return cls(folder.storage, folder.manifest_key, folder.dataset, folder.symbol, folder.year)

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
    final: Path,
    *,
    request: RecordedRequest,
    merged: Any,
    parts: list[Part],
    engine: str = "stream",
    batch: BatchRecord | None = None,
) -> ManifestEntry:
    """One product's manifest entry: the file, its content and the exact request behind it.

    Files this tool writes are framed canonically; an adopted file is described as found.
    """
    from backend.jobs.core.dbn import FRAMING

    def stamp(ns: int | None) -> str | None:
        return None if ns is None else format_ns(ns)

    return ManifestEntry(
        file=final.name,
        bytes=merged.bytes,
        sha256=merged.sha256,
        records=merged.records,
        first_ts_recv=stamp(merged.first_ts_recv),
        last_ts_recv=stamp(merged.last_ts_recv),
        request=request,
        chunks=tuple(
            ChunkRecord(
                start=part.request.span.start,
                end=part.request.span.end,
                bytes=part.summary.bytes,
                sha256=part.summary.sha256,
                records=part.summary.records,
            )
            for part in sorted(parts, key=lambda part: part.request.span)
        ),
        versions=versions(),
        created_at=now_iso(),
        engine=engine,
        batch=batch,
        framing="" if engine == "adopted" else FRAMING,
    )


def versions() -> dict[str, str]:
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


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
