"""The unit of work as plain data: what the planner hands the engines, and how a run fetches.

A `GroupPlan` (its `ProductPlan` members) says what to fetch; a `RunConfig` says how, without
the API key and without any open object (no pool, lock, store or client): both pickle, so the
unit of work (`engines.runner.fetch_group`) can run in another process or on another machine,
which builds its own client and store from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.jobs.core.dbn import HeaderFields
from backend.jobs.core.locations import StoreLocation
from backend.jobs.core.ranges import Chunking, Product, TimeRange
from backend.jobs.core.request import DEFAULT_TIMEOUT_S, IngestRequest, JobRecord
from backend.jobs.core.units import DEFAULT_BATCH_TIMEOUT, parse_duration


@dataclass(frozen=True)
class ProductPlan:
    """One symbol-year-product to fetch."""

    symbol: str
    year: int
    product: Product
    span: TimeRange  # the year, clamped to the dataset and to where the symbol resolves
    instrument_ids: tuple[str, ...]
    header: HeaderFields  # the merged file's symbology as resolved, checked against the data
    listed: tuple[TimeRange, ...]  # where in `span` the symbol resolves to an instrument

    @property
    def identity(self) -> tuple[str, int, str]:
        """(symbol, year, product name): how a run's results are keyed."""
        return (self.symbol, self.year, self.product.name)


@dataclass(frozen=True)
class GroupPlan:
    """Symbol-year-products fetched together: one get_range per chunk for all their symbols,
    or one batch job."""

    number: int
    dataset: str
    product: Product
    span: TimeRange
    members: tuple[ProductPlan, ...]
    chunks: tuple[TimeRange, ...]  # stream: the requests; batch: the job's files (as expected)
    estimated_bytes: int
    estimated_usd: float  # what this run pays for it (0 for a job already paid)
    engine: str = "stream"  # or "batch"
    why: str = ""  # why this engine, for the dry run and the logs
    job: JobRecord | None = None  # batch: a job submitted earlier, resumed instead of paid again

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(member.symbol for member in self.members)

    @property
    def year(self) -> int:
        return self.members[0].year


@dataclass(frozen=True)
class RunConfig:
    """How a run fetches: its settings without the API key (read from the environment where
    the work runs), the store as a URL and the local work dir as a path."""

    store: StoreLocation  # the data dir: a local folder, or s3://BUCKET/PREFIX
    work_dir: Path  # local: parts and merged files before they are published (a local data dir)
    gateway: str | None = None  # None: Databento's
    chunking: Chunking = "auto"
    jobs: int = 4  # chunks (or batch files) in flight
    retries: int = 5
    timeout_s: float = DEFAULT_TIMEOUT_S
    lock_timeout_s: float = 600.0
    batch_timeout_s: float = parse_duration(DEFAULT_BATCH_TIMEOUT)

    @classmethod
    def of(
        cls, request: IngestRequest, *, store: StoreLocation, work_dir: Path, gateway: str | None
    ) -> RunConfig:
        return cls(
            store=store,
            work_dir=work_dir,
            gateway=gateway,
            chunking=request.chunking,
            jobs=request.jobs,
            retries=request.retries,
            timeout_s=request.timeout_s,
            lock_timeout_s=request.lock_timeout_s,
            batch_timeout_s=request.batch_timeout_s,
        )
