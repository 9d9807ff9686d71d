"""A manifest's content, pure: the entry of each cached file and the one validating parser.

An entry of the wrong shape is data, not a crash: it is reported as damaged, and the products
it describes are treated as unrecorded (validated again, then adopted or fetched). Read and
written through a store by cache/manifest.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from backend.jobs.core.ranges import TimeRange, parse_timestamp_ns

MANIFEST_FORMAT = 1
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


class FileFacts(Protocol):
    """What a full pass over a DBN file established (a merged file, a part, a scanned file)."""

    @property
    def bytes(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def records(self) -> int: ...
    @property
    def first_ts_recv(self) -> int | None: ...
    @property
    def last_ts_recv(self) -> int | None: ...


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk a file was merged from: its range and what it held."""

    start: str
    end: str
    bytes: int
    sha256: str
    records: int

    @classmethod
    def of(cls, span: TimeRange, facts: FileFacts) -> ChunkRecord:
        return cls(span.start, span.end, facts.bytes, facts.sha256, facts.records)

    @property
    def span(self) -> TimeRange:
        return TimeRange(parse_timestamp_ns(self.start), parse_timestamp_ns(self.end))


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
