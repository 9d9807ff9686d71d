"""What one run is asked to do, and what it did for each symbol-year-product."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.jobs.client.retry import DEFAULT_TIMEOUT_S
from backend.jobs.core.ranges import Chunking, Product
from backend.jobs.core.units import (
    DEFAULT_BATCH_ABOVE,
    DEFAULT_BATCH_TIMEOUT,
    Engine,
    parse_duration,
    parse_size,
)
from backend.jobs.logs import completion_line

# Symbols per multi-symbol request. Each symbol of a group in flight keeps a zstd context
# (~0.45 MB) while its records are split out, so 50 x 4 jobs stays near 100 MB.
DEFAULT_GROUP_SIZE = 50


@dataclass(frozen=True)
class IngestRequest:
    symbols: tuple[str, ...]
    years: tuple[int, ...]
    products: tuple[Product, ...]
    dataset: str = "XNAS.ITCH"
    force: bool = False
    verify: bool = False
    chunking: Chunking = "month"
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


@dataclass
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
