"""What one run is asked to do, and what it did for each product."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.jobs.logs import completion_line
from backend.jobs.plan import Chunking, Product
from backend.jobs.retry import DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class IngestRequest:
    symbol: str
    year: int
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


@dataclass
class ProductResult:
    product: Product
    status: str  # "downloaded" or "skipped"
    bytes: int
    records: int
    elapsed_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def log(self, request: IngestRequest) -> None:
        rate = (
            self.bytes / 1e6 / self.elapsed_s
            if self.status == "downloaded" and self.elapsed_s
            else 0
        )
        completion_line(
            symbol=request.symbol,
            year=request.year,
            product=self.product.name,
            status=self.status,
            bytes=self.bytes,
            elapsed_s=round(self.elapsed_s, 2),
            records=self.records,
            mb_per_s=round(rate, 1),
            **self.extra,
        )
