"""The requests: what one run is asked to do (and what it did for each symbol-year-product),
one `get_range` call, one batch job (a range request plus its split), and a batch job as this
tool records it (stored as `batch-job.json` by cache/jobrecord.py)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from backend.jobs.core.ranges import (
    STYPE_IN,
    STYPE_OUT,
    Chunking,
    Product,
    TimeRange,
    now_iso,
    parse_timestamp_ns,
)
from backend.jobs.core.units import (
    DEFAULT_BATCH_ABOVE,
    DEFAULT_BATCH_TIMEOUT,
    Engine,
    parse_duration,
    parse_size,
)
from backend.jobs.logs import completion_line

# Symbols per multi-symbol request: one latency round for many small symbols. A split holds at
# most ~32 MiB of a group's records in memory (engines/split.py), whatever the group's size.
DEFAULT_GROUP_SIZE = 50
# Seconds without a byte before a request is given up (and retried): --timeout's default.
DEFAULT_TIMEOUT_S = 30.0
# How far before a recorded submit a lost job is looked for (clocks differ a little).
CLOCK_SLACK = timedelta(minutes=10)


@dataclass(frozen=True)
class IngestRequest:
    symbols: tuple[str, ...]
    years: tuple[int, ...]
    products: tuple[Product, ...]
    dataset: str = "XNAS.ITCH"
    force: bool = False
    verify: bool = False
    chunking: Chunking = "auto"
    jobs: int = 4
    retries: int = 5
    timeout_s: float = DEFAULT_TIMEOUT_S
    lock_timeout_s: float = 600.0
    dry_run: bool = False
    group_size: int = DEFAULT_GROUP_SIZE
    engine: Engine | None = None  # None: DATABENTO_ENGINE, else auto
    batch_above: int = parse_size(DEFAULT_BATCH_ABOVE)
    batch_timeout_s: float = parse_duration(DEFAULT_BATCH_TIMEOUT)

    @property
    def is_universe(self) -> bool:
        """More than one symbol-year: universe tables and summary instead of one symbol's."""
        return len(self.symbols) * len(self.years) > 1


@dataclass(frozen=True)
class ProductResult:
    symbol: str
    year: int
    product: Product
    status: str  # "downloaded" or "skipped"
    bytes: int
    records: int
    elapsed_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def log(self) -> None:
        rate = (
            self.bytes / 1e6 / self.elapsed_s
            if self.status == "downloaded" and self.elapsed_s
            else 0
        )
        completion_line(
            symbol=self.symbol,
            year=self.year,
            product=self.product.name,
            status=self.status,
            bytes=self.bytes,
            elapsed_s=round(self.elapsed_s, 2),
            records=self.records,
            mb_per_s=round(rate, 1),
            **self.extra,
        )


@dataclass(frozen=True)
class RangeRequest:
    """One `timeseries.get_range` call, as sent and as recorded in the manifest."""

    dataset: str
    symbols: tuple[str, ...]
    schema: str
    span: TimeRange

    def params(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "symbols": list(self.symbols),
            "schema": self.schema,
            "stype_in": STYPE_IN,
            "stype_out": STYPE_OUT,
            "start": self.span.start,
            "end": self.span.end,
        }


@dataclass(frozen=True)
class JobRequest:
    """What one batch job asks for: the group's symbols over the exact streaming range."""

    dataset: str
    symbols: tuple[str, ...]
    schema: str
    span: TimeRange
    split_duration: str

    def submit_params(self) -> dict[str, Any]:
        return {
            **self.as_json(),
            "encoding": "dbn",
            "compression": "zstd",
            "split_symbols": False,
            "stype_in": STYPE_IN,
            "stype_out": STYPE_OUT,
            "delivery": "download",
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "symbols": list(self.symbols),
            "schema": self.schema,
            "start": self.span.start,
            "end": self.span.end,
            "split_duration": self.split_duration,
        }

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> JobRequest:
        return cls(
            dataset=str(raw["dataset"]),
            symbols=tuple(str(symbol) for symbol in raw["symbols"]),
            schema=str(raw["schema"]),
            span=TimeRange(parse_timestamp_ns(raw["start"]), parse_timestamp_ns(raw["end"])),
            split_duration=str(raw["split_duration"]),
        )

    def answered_by(self, details: dict[str, Any]) -> bool:
        """Whether a job the service describes is this request (a lost submit's answer)."""
        try:
            return (
                details.get("dataset") == self.dataset
                and details.get("schema") == self.schema
                and job_symbols(details.get("symbols")) == _symbol_set(self.symbols)
                and parse_timestamp_ns(str(details.get("start"))) == self.span.start_ns
                and parse_timestamp_ns(str(details.get("end"))) == self.span.end_ns
                and details.get("split_duration") == self.split_duration
                and details.get("encoding") == "dbn"
                and details.get("compression") == "zstd"
                and not details.get("split_symbols")
                and details.get("stype_in", STYPE_IN) == STYPE_IN
                and details.get("stype_out", STYPE_OUT) == STYPE_OUT
            )
        except ValueError:
            return False

    def covers(self, symbol: str, dataset: str, schema: str, span: TimeRange) -> bool:
        """Whether this job holds exactly what a symbol-year-product needs."""
        return (
            symbol in self.symbols
            and self.dataset == dataset
            and self.schema == schema
            and self.span == span
        )


@dataclass(frozen=True)
class JobRecord:
    """A batch job as recorded: from before its submit (no id yet) to its end (or failure)."""

    request: JobRequest
    job_id: str | None = None  # None: submitting; the answer may have been lost
    cost_usd: float | None = None
    submitted_since: str = ""  # when the submit was about to be sent (UTC, ISO)
    failed: str | None = None  # why its files cannot be used (validation), else None

    @classmethod
    def submitting(cls, request: JobRequest) -> JobRecord:
        return cls(request, submitted_since=now_iso())

    def submitted(self, job_id: str, cost_usd: float | None) -> JobRecord:
        return replace(self, job_id=job_id, cost_usd=cost_usd)

    def failing(self, reason: str) -> JobRecord:
        return replace(self, failed=reason)

    @property
    def look_since(self) -> str:
        """The list_jobs `since` that finds this record's job, if it was created."""
        moment = datetime.fromisoformat(self.submitted_since.replace("Z", "+00:00"))
        return (moment - CLOCK_SLACK).isoformat()

    def as_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "cost_usd": self.cost_usd,
            "submitted_since": self.submitted_since,
            "request": self.request.as_json(),
            **({"failed": self.failed} if self.failed is not None else {}),
        }


def job_symbols(raw: Any) -> frozenset[str] | None:
    """The symbols of a job object, as a set; None when they are neither a string nor a list.

    Databento documents them as one comma-joined string (`"ZC.FUT,ES.FUT"` in the example of
    `batch.get_job_details`); its C++ and Rust clients also accept an array (the C++ one notes a
    single symbol may come as a plain string). Order and repeats carry no meaning, and the SDK
    upper-cases symbols before sending them, so both sides are compared in that form.
    """
    if isinstance(raw, str):
        return _symbol_set(raw.split(","))
    if isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
        return _symbol_set(raw)
    return None


def _symbol_set(symbols: Any) -> frozenset[str]:
    return frozenset(name.strip().upper() for name in symbols if name.strip())
