"""Before any billable request: what each symbol-year-product resolves to, how the products to
fetch are grouped into multi-symbol requests, and what the whole run will cost."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from backend.jobs.core.concurrency import run_concurrently
from backend.jobs.core.dbn import HeaderFields, coalesce
from backend.jobs.core.ranges import (
    Chunking,
    Product,
    TimeRange,
    chunk_unit,
    clamp_year,
    date_ns,
    ns_to_datetime,
    split_listed,
    split_range,
    symbology_end_date,
)
from backend.jobs.core.request import RangeRequest
from backend.jobs.core.units import Engine, shown_sizes, split_duration, usd
from backend.jobs.core.work import GroupPlan, ProductPlan
from backend.jobs.errors import EXIT_INVALID_INPUT, BudgetExceededError, InvalidInputError
from backend.jobs.logs import key_value_line
from backend.jobs.plan.resume import resume_recorded_jobs

if TYPE_CHECKING:
    from backend.jobs.cache.layout import YearFolder

MAX_SYMBOLS_PER_REQUEST = 2_000  # Databento's limit for one get_range or symbology.resolve
ESTIMATES_AT_ONCE = 4  # metadata calls in flight during the preflight (20/s allowed)


def batched(items: list[Any], size: int) -> list[list[Any]]:
    """Pure: consecutive runs of at most `size` items."""
    return [items[start : start + size] for start in range(0, len(items), size)]


class MetadataClient(Protocol):
    def dataset_range(self, dataset: str) -> dict[str, TimeRange]: ...
    def resolve(self, dataset: str, symbols: list[str], span: TimeRange) -> dict[str, Any]: ...
    def estimate(self, request: RangeRequest) -> tuple[int, float]: ...


UNKNOWN_SYMBOL = "unknown to the dataset"
NO_DATA = "no data in that year"
FAILED = "failed"


@dataclass(frozen=True)
class Failure:
    """A symbol-year (or one product of it) that was not fetched, and why.

    Found by the preflight: unknown to the dataset, or no data in that year (input to fix,
    exit 2, every product of the symbol-year). Or left by a run that failed before fetching
    it: the error's own exit code and one line (1: run again; 3: credentials).
    """

    symbol: str
    year: int
    message: str  # one line: what is wrong and what to do
    reason: str = UNKNOWN_SYMBOL  # short: UNKNOWN_SYMBOL, NO_DATA or FAILED
    product: str | None = None  # None: every product of the symbol-year
    exit_code: int = EXIT_INVALID_INPUT

    @property
    def name(self) -> str:
        """`NOSUCH 2023`, or `AAPL 2023 TRADES` for one product."""
        return " ".join(str(part) for part in (self.symbol, self.year, self.product) if part)


@dataclass
class UniversePlan:
    groups: list[GroupPlan]
    failures: list[Failure]

    @property
    def members(self) -> list[ProductPlan]:
        return [member for group in self.groups for member in group.members]

    @property
    def estimated_usd(self) -> float:
        return sum(group.estimated_usd for group in self.groups)

    @property
    def estimated_bytes(self) -> int:
        return sum(group.estimated_bytes for group in self.groups)


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


def plan_universe(
    client: MetadataClient,
    *,
    dataset: str,
    pending: list[tuple[YearFolder, Product]],
    chunking: Chunking,
    group_size: int,
    engine: Engine = "stream",
    batch_above: int = 0,
    dry_run: bool = False,
    force: bool = False,
) -> UniversePlan:
    """Clamp, resolve (many symbols per call), group, estimate and pick each group's engine.

    Products a batch job recorded earlier (paid, not expired) are fetched from that job,
    whatever `engine` says: paying again for data already paid for is never the better deal;
    a job recorded as failed (unusable files) stops the run, unless `engine` is "stream" or
    `force` is set: then its products are planned without it.
    """
    failures: dict[tuple[str, int], Failure] = {}
    spans = clamped_spans(client, dataset, pending, failures)
    answers = resolve_all(client, dataset, pending, spans, failures)
    members = resolved_members(dataset, pending, spans, answers, failures)
    members = [m for m in members if (m.symbol, m.year) not in failures]
    folders = {(folder.symbol, folder.year): folder for folder, _ in pending}
    resumed, members = resume_recorded_jobs(
        client, dataset, members, folders, dry_run=dry_run, skip_failed=engine == "stream" or force
    )
    batches = group_members(members, group_size)
    groups = estimate_groups(client, dataset, batches, chunking)
    groups = [with_engine(group, engine, batch_above, chunking) for group in groups]
    numbered = [replace(group, number=n) for n, group in enumerate(resumed + groups, start=1)]
    return UniversePlan(numbered, list(failures.values()))


def clamped_spans(
    client: MetadataClient,
    dataset: str,
    pending: list[tuple[YearFolder, Product]],
    failures: dict[tuple[str, int], Failure],
) -> dict[tuple[int, Product], TimeRange]:
    """Each (year, product) cut to what the dataset holds; a year it holds none of fails its
    symbol-years (NO_DATA)."""
    available = client.dataset_range(dataset)
    spans: dict[tuple[int, Product], TimeRange] = {}
    for folder, product in pending:
        year_product = (folder.year, product)
        if year_product in spans:
            continue
        try:
            schema_range = available.get(product.schema, available["*"])
            spans[year_product] = clamp_year(folder.year, schema_range, dataset, product.schema)
        except InvalidInputError as exc:
            failures.setdefault(
                (folder.symbol, folder.year),
                Failure(folder.symbol, folder.year, str(exc), reason=NO_DATA),
            )
    return spans


def resolved_members(
    dataset: str,
    pending: list[tuple[YearFolder, Product]],
    spans: dict[tuple[int, Product], TimeRange],
    answers: dict[tuple[TimeRange, str], dict[str, Any]],
    failures: dict[tuple[str, int], Failure],
) -> list[ProductPlan]:
    """Each product as symbology resolves it: its range cut to where the symbol is listed; a
    symbol listed nowhere in it fails its symbol-year (UNKNOWN_SYMBOL)."""
    members: list[ProductPlan] = []
    for folder, product in pending:
        span = spans.get((folder.year, product))
        if span is None or (folder.symbol, folder.year) in failures:
            continue
        symbol = folder.symbol
        answer = answers[(span, symbol)]
        covered = resolved_span(answer, symbol, span)
        if covered is None:
            failures[(folder.symbol, folder.year)] = Failure(
                folder.symbol,
                folder.year,
                f"symbol {folder.symbol} is not found in {dataset} for {folder.year}: check the "
                "ticker (raw_symbol as Databento lists it) or pick another dataset or year",
                reason=UNKNOWN_SYMBOL,
            )
            continue
        if covered != span:
            logger.warning(
                "{} {}: {} resolves only from {} to {} of {}; fetching that part (partial year)",
                *(product.name, dataset, folder.symbol, covered.start[:10], covered.end[:10]),
                folder.year,
            )
        members.append(
            ProductPlan(
                symbol=folder.symbol,
                year=folder.year,
                product=product,
                span=covered,
                instrument_ids=tuple(
                    sorted({item["s"] for item in answer["result"][folder.symbol]})
                ),
                header=predicted_header(answer, folder.symbol, covered),
                listed=tuple(listed_periods(answer, folder.symbol, covered)),
            )
        )
    return members


def choose_engine(engine: Engine, estimated_bytes: int, batch_above: int) -> tuple[str, str]:
    """Pure: (engine, why) for one group of symbol-year-products from its preflight estimate."""
    if engine == "stream":
        return "stream", "--engine stream"
    if engine == "batch":
        return "batch", "--engine batch"
    size, limit = shown_sizes(estimated_bytes, batch_above)
    if estimated_bytes > batch_above:
        return "batch", f"estimate {size} > --batch-above {limit}"
    return "stream", f"estimate {size} <= --batch-above {limit}"


def with_engine(
    group: GroupPlan, engine: Engine, batch_above: int, chunking: Chunking
) -> GroupPlan:
    """The group as its engine fetches it: a batch job's files follow its split duration."""
    chosen, why = choose_engine(engine, group.estimated_bytes, batch_above)
    if chosen == "stream":
        return replace(group, why=why)
    files = split_range(group.span, split_duration(chunking))
    return replace(group, engine="batch", why=why, chunks=tuple(files))


def resolve_all(
    client: MetadataClient,
    dataset: str,
    pending: list[tuple[YearFolder, Product]],
    spans: dict[tuple[int, Product], TimeRange],
    failures: dict[tuple[str, int], Failure],
) -> dict[tuple[TimeRange, str], dict[str, Any]]:
    """symbology.resolve for every (range, symbol), as few calls as the API allows."""
    wanted: dict[TimeRange, dict[str, None]] = defaultdict(dict)  # ordered sets
    for folder, product in pending:
        span = spans.get((folder.year, product))
        if span is not None and (folder.symbol, folder.year) not in failures:
            wanted[span][folder.symbol] = None
    calls = [
        (span, list(batch))
        for span, symbols in wanted.items()
        for batch in batched(list(symbols), MAX_SYMBOLS_PER_REQUEST)
    ]
    answers = run_concurrently(
        [
            lambda span=span, batch=batch: client.resolve(dataset, batch, span)
            for span, batch in calls
        ],
        "resolve",
        limit=ESTIMATES_AT_ONCE,
    )
    return {
        (span, symbol): answer
        for (span, batch), answer in zip(calls, answers, strict=True)
        for symbol in batch
    }


def group_members(members: list[ProductPlan], group_size: int) -> list[list[ProductPlan]]:
    """Pure: members with the same product and range, in groups of at most `group_size`."""
    same: dict[tuple[str, TimeRange], list[ProductPlan]] = defaultdict(list)
    for member in members:
        same[(member.product.name, member.span)].append(member)
    return [
        list(batch)
        for alike in same.values()
        for batch in batched(alike, min(group_size, MAX_SYMBOLS_PER_REQUEST))
    ]


def estimate_groups(
    client: MetadataClient,
    dataset: str,
    batches: list[list[ProductPlan]],
    chunking: Chunking,
) -> list[GroupPlan]:
    """One estimate per group (the server prices many symbols at once), and the group's chunks."""

    def requests(batch: list[ProductPlan]) -> RangeRequest:
        first = batch[0]
        symbols = tuple(member.symbol for member in batch)
        return RangeRequest(dataset, symbols, first.product.schema, first.span)

    estimates = run_concurrently(
        [lambda batch=batch: client.estimate(requests(batch)) for batch in batches],
        "estimate",
        limit=ESTIMATES_AT_ONCE,
    )
    groups = []
    for number, (batch, (size, cost)) in enumerate(zip(batches, estimates, strict=True), start=1):
        first = batch[0]
        listed = [period for member in batch for period in member.listed]
        group = GroupPlan(
            number=number,
            dataset=dataset,
            product=first.product,
            span=first.span,
            members=tuple(batch),
            chunks=tuple(split_listed(first.span, listed, chunk_unit(chunking, size))),
            estimated_bytes=size,
            estimated_usd=cost,
        )
        log_preflight(group)
        groups.append(group)
    return groups


def log_preflight(group: GroupPlan) -> None:
    """One `preflight` line per group: who (a symbol-year, or how many), then what and how much."""
    first = group.members[0]
    if len(group.members) == 1:
        who = {"symbol": first.symbol, "year": first.year}
    else:
        who = {"group": group.number, "symbols": len(group.members), "year": first.year}
    what = {"product": group.product.name, "start": group.span.start, "end": group.span.end}
    if len(group.members) == 1:
        what["instrument_ids"] = ",".join(first.instrument_ids)
    key_value_line(
        "preflight",
        **who,
        **what,
        chunks=len(group.chunks),
        est_bytes=group.estimated_bytes,
        est_usd=round(group.estimated_usd, 6),
    )


def check_budget(plan: UniversePlan, max_cost: float | None) -> None:
    if max_cost is None:
        return
    total = plan.estimated_usd
    if total > max_cost:
        by_product: dict[str, float] = defaultdict(float)
        for group in plan.groups:
            by_product[group.product.name] += group.estimated_usd
        detail = ", ".join(f"{name} {usd(cost)}" for name, cost in by_product.items())
        raise BudgetExceededError(
            f"estimated cost {usd(total)} ({detail}) exceeds the budget of {usd(max_cost)} "
            "(--max-cost / DATABENTO_MAX_COST): "
            "raise the budget, fetch fewer products, or use --dry-run to review the plan"
        )
