"""Before any billable request: what each product's range resolves to and what it will cost."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Protocol

from loguru import logger

from backend.jobs.client import RangeRequest
from backend.jobs.dbnfile import HeaderFields, coalesce
from backend.jobs.errors import BudgetExceededError, InvalidInputError
from backend.jobs.logs import key_value_line
from backend.jobs.plan import (
    Chunking,
    Product,
    TimeRange,
    date_ns,
    ns_to_datetime,
    split_listed,
    symbology_end_date,
)


class MetadataClient(Protocol):
    def resolve(self, dataset: str, symbol: str, span: TimeRange) -> dict[str, Any]: ...
    def estimate(self, request: RangeRequest) -> tuple[int, float]: ...


@dataclass(frozen=True)
class ProductPlan:
    product: Product
    span: TimeRange  # the year, clamped to the dataset and to where the symbol resolves
    chunks: list[TimeRange]
    instrument_ids: list[str]
    estimated_bytes: int
    estimated_usd: float
    header: HeaderFields  # the merged file's symbology as resolved, checked against the data


def predicted_header(answer: dict[str, Any], symbol: str, span: TimeRange) -> HeaderFields:
    """Pure: resolved intervals clipped to `span`'s dates, as the merged header will hold them.

    Symbology is asked only up to the last midnight of a mid-day end, so an interval reaching
    that midnight is taken to run on to the end of the day (the merge checks it against the
    chunks' own metadata).
    """
    first = ns_to_datetime(span.start_ns).date()
    last = ns_to_datetime(span.end_ns - 1).date() + timedelta(days=1)  # end date, exclusive
    asked_end = symbology_end_date(span)
    intervals = []
    for item in answer["result"][symbol]:
        start = max(date.fromisoformat(item["d0"]), first)
        end = date.fromisoformat(item["d1"])
        end = min(last if end == asked_end else end, last)
        if start < end:
            intervals.append((start, end, item["s"]))
    return HeaderFields({symbol: coalesce(intervals)}, partial=[], not_found=[])


def resolved_span(answer: dict[str, Any], symbol: str, span: TimeRange) -> TimeRange | None:
    """Pure: the part of `span` covered by the symbol's resolved intervals (None: not at all)."""
    intervals = answer.get("result", {}).get(symbol) or []
    if not intervals or symbol in (answer.get("not_found") or []):
        return None
    first = date_ns(date.fromisoformat(min(item["d0"] for item in intervals)))
    last_day = date.fromisoformat(max(item["d1"] for item in intervals))
    # listed up to the last midnight symbology was asked about: listed to the (mid-day) end
    last = span.end_ns if last_day >= symbology_end_date(span) else date_ns(last_day)
    start, end = max(span.start_ns, first), min(span.end_ns, last)
    return TimeRange(start, end) if start < end else None


def listed_periods(answer: dict[str, Any], symbol: str, span: TimeRange) -> list[TimeRange]:
    """Pure: the stretches of `span` in which the symbol resolves to some instrument."""
    asked_end = symbology_end_date(span)
    periods = []
    for item in answer.get("result", {}).get(symbol) or []:
        end_day = date.fromisoformat(item["d1"])
        end = span.end_ns if end_day >= asked_end else date_ns(end_day)
        periods.append(TimeRange(date_ns(date.fromisoformat(item["d0"])), end))
    return periods


def plan_product(
    client: MetadataClient,
    *,
    dataset: str,
    symbol: str,
    year: int,
    product: Product,
    span: TimeRange,
    chunking: Chunking,
) -> ProductPlan:
    answer = client.resolve(dataset, symbol, span)
    covered = resolved_span(answer, symbol, span)
    if covered is None:
        raise InvalidInputError(
            f"symbol {symbol} is not found in {dataset} for {year}: check the ticker "
            "(raw_symbol as Databento lists it) or pick another dataset or year"
        )
    if covered != span:
        logger.warning(
            "{} {}: {} resolves only from {} to {} of {}; fetching that part (partial year)",
            product.name,
            dataset,
            symbol,
            covered.start[:10],
            covered.end[:10],
            year,
        )
    ids = sorted({item["s"] for item in answer["result"][symbol]})
    size, cost = client.estimate(RangeRequest(dataset, (symbol,), product.schema, covered))
    header = predicted_header(answer, symbol, covered)
    chunks = split_listed(covered, listed_periods(answer, symbol, covered), chunking)
    plan = ProductPlan(product, covered, chunks, ids, size, cost, header)
    key_value_line(
        "preflight",
        symbol=symbol,
        year=year,
        product=product.name,
        start=covered.start,
        end=covered.end,
        instrument_ids=",".join(ids),
        chunks=len(plan.chunks),
        est_bytes=size,
        est_usd=round(cost, 6),
    )
    return plan


def check_budget(plans: list[ProductPlan], max_cost: float | None) -> None:
    if max_cost is None:
        return
    total = sum(plan.estimated_usd for plan in plans)
    if total > max_cost:
        detail = ", ".join(f"{plan.product.name} {usd(plan.estimated_usd)}" for plan in plans)
        raise BudgetExceededError(
            f"estimated cost {usd(total)} ({detail}) exceeds the budget of {usd(max_cost)} "
            "(--max-cost / DATABENTO_MAX_COST): "
            "raise the budget, fetch fewer products, or use --dry-run to review the plan"
        )


def usd(value: float) -> str:
    """Cents for real amounts; sub-cent estimates keep their digits so they never read $0.00."""
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.2g}"
