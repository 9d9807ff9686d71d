"""Tables for people: the dry-run plan, the end-of-run summary and the cache status."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from backend.jobs.cache.inventory import CachedProduct, RecordedJob
    from backend.jobs.core.ranges import TimeRange
    from backend.jobs.core.request import IngestRequest, ProductResult
    from backend.jobs.ingest import IngestReport
    from backend.jobs.plan.preflight import GroupPlan

from backend.jobs.core.ranges import counted
from backend.jobs.plan.preflight import usd

PIPE_WIDTH = 120


def _console() -> Console:
    from rich.console import Console

    # rich reads NO_COLOR and TERM=dumb itself; a pipe gets a fixed width instead of 80 columns
    return Console(width=None if sys.stdout.isatty() else PIPE_WIDTH, highlight=False)


def _table(title: str, columns: Sequence[str]) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        justify = (
            "left"
            if column in {"dataset", "product", "status", "symbol", "range", "manifest"}
            else "right"
        )
        table.add_column(column, justify=justify)
    return table


def _megabytes(size: int | None) -> str:
    """`25.0 MB`, or `-` when unknown."""
    return "-" if size is None else f"{size / 1e6:,.1f} MB"


SCREENFUL = 40  # rows of a universe table shown in full; beyond, the head and tail


def print_plan(report: IngestReport, request: IngestRequest) -> None:
    """Dry run: what would be fetched, in how many requests, for how much."""
    if request.is_universe:
        print_universe_plan(report, request)
        return
    table = _table(
        f"Dry run: {request.symbols[0]} {request.years[0]} (nothing downloaded)",
        ["product", "status", "engine", "range", "chunks", "est. billable", "est. USD"],
    )
    for result in report.results:
        table.add_row(result.product.name, "cached", "-", "-", "-", "-", usd(0))
    for group in report.plan.groups:
        table.add_row(
            group.product.name,
            "to download",
            group.engine,
            _span_excl(group.span),
            str(len(group.chunks)),
            _megabytes(group.estimated_bytes),
            usd(group.estimated_usd),
        )
    table.add_section()
    plan = report.plan
    table.add_row("total", *[""] * 4, _megabytes(plan.estimated_bytes), usd(plan.estimated_usd))
    console = _console()
    console.print(table)
    for group in report.plan.groups:
        console.print(f"{group.product.name}: {_engine_and_why(group)}", soft_wrap=True)


def print_universe_plan(report: IngestReport, request: IngestRequest) -> None:
    """Dry run of a universe: one row per symbol-year-product, then the requests and the cost."""
    rows = universe_plan_rows(report)
    table = _table(
        f"Dry run: {counted(len(request.symbols), 'symbol')} x "
        f"{counted(len(request.years), 'year')} "
        "(nothing downloaded)",
        ["symbol", "year", "product", "status", "range", "group", "engine"],
    )
    for row in _screenful(rows):
        table.add_row(*row)
    console = _console()
    console.print(table)
    requests = sum(len(group.chunks) for group in report.plan.groups)
    console.print(
        f"to download: {counted(len(report.plan.members), 'symbol-year-product')} in "
        f"{counted(len(report.plan.groups), 'group')}, {counted(requests, 'request')}, est. "
        f"{_megabytes(report.plan.estimated_bytes)} billable, {usd(report.plan.estimated_usd)}; "
        f"cached: {len(report.results)}; unknown or without data: {len(report.failures)}",
        soft_wrap=True,
    )
    for group in report.plan.groups:
        if group.engine == "batch":
            console.print(
                f"group {group.number} ({group.product.name}): {_engine_and_why(group)}",
                soft_wrap=True,
            )


def universe_plan_rows(report: IngestReport) -> list[list[str]]:
    """Pure: symbol, year, product, status, range, group, engine: cached, then to download,
    then unknown or without data."""
    rows = [
        [r.symbol, str(r.year), r.product.name, "cached", "-", "-", "-"] for r in report.results
    ]
    for group in report.plan.groups:
        rows += [
            [
                m.symbol,
                str(m.year),
                m.product.name,
                "to download",
                _span_excl(m.span),
                str(group.number),
                group.engine,
            ]
            for m in group.members
        ]
    return rows + [
        [f.symbol, str(f.year), f.product or "-", f.reason, "-", "-", "-"] for f in report.failures
    ]


def _screenful(rows: list[list[str]]) -> list[list[str]]:
    """All rows if they fit on a screen; else the head, one `... N more rows` row, the tail."""
    if len(rows) <= SCREENFUL:
        return rows
    more = ["...", "", "", f"{len(rows) - SCREENFUL + 5} more rows", "", "", ""]
    return [*rows[: SCREENFUL - 5], more, *rows[-5:]]


def _engine_and_why(group: GroupPlan) -> str:
    """`stream` or `batch`, and why: the estimate against --batch-above, or a paid job."""
    return f"{group.engine}, {group.why}" if group.why else group.engine


def print_summary(report: IngestReport, request: IngestRequest) -> None:
    """After a run: per product what happened, and the estimate against what was received."""
    if request.is_universe:
        print_universe_summary(report)
        return
    groups = {group.product.name: group for group in report.plan.groups}
    table = _table(
        f"Summary: {request.symbols[0]} {request.years[0]}",
        ["product", "status", "size", "records", "elapsed s", "MB/s", "est. USD", "billed USD"],
    )
    for result in report.results:
        table.add_row(*_summary_row(result, groups.get(result.product.name)))
    for failure in report.failures:  # not fetched: the reason is on stderr, and below
        table.add_row(failure.product or "all", failure.reason, *["-"] * 6)
    _console().print(table)


def _summary_row(result: ProductResult, group: GroupPlan | None) -> list[str]:
    """One product after a run: size, records, speed, the estimate and what was billed."""
    downloaded = result.status == "downloaded"
    rate = result.bytes / 1e6 / result.elapsed_s if downloaded and result.elapsed_s else 0.0
    estimate = group.estimated_usd if group and downloaded else 0.0
    # Databento bills uncompressed DBN bytes: scale the estimate by what actually arrived.
    billed = result.records * result.product.record_size
    ratio = billed / group.estimated_bytes if group and group.estimated_bytes else 0.0
    return [
        result.product.name,
        result.status,
        _megabytes(result.bytes),
        f"{result.records:,}",
        f"{result.elapsed_s:.2f}",
        f"{rate:.1f}" if downloaded else "-",
        usd(estimate),
        usd(estimate * ratio if downloaded else 0.0),
    ]


def print_universe_summary(report: IngestReport) -> None:
    """After a universe run, also a failed one: counts, then every symbol-year(-product) that
    was not fetched, by name, under its reason (a failure with its one-line error)."""
    downloaded = report.downloaded
    failed = [failure for failure in report.failures if failure.product is not None]
    unknown = [failure for failure in report.failures if failure.product is None]
    console = _console()
    console.print(
        f"Summary: {counted(len(downloaded), 'symbol-year-product')} downloaded "
        f"({_megabytes(sum(result.bytes for result in downloaded))}), "
        f"{len(report.results) - len(downloaded)} cached, {len(failed)} failed; "
        f"{counted(len(unknown), 'symbol-year')} unknown or without data; "
        f"estimate {usd(report.plan.estimated_usd)}",
        soft_wrap=True,
    )
    for line in not_fetched_lines(report):
        console.print(line, soft_wrap=True)


def not_fetched_lines(report: IngestReport) -> list[str]:
    """Pure: `Not fetched (REASON): NAMES`, one line per reason (and per error for failures)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for failure in report.failures:
        detail = failure.message if failure.product is not None else ""
        grouped.setdefault((failure.reason, detail), []).append(failure.name)
    return [
        f"Not fetched ({reason}): {', '.join(names)}" + (f": {detail}" if detail else "")
        for (reason, detail), names in grouped.items()
    ]


def _span_excl(span: TimeRange) -> str:
    """`2023-01-01 .. 2024-01-01 (excl.)`: a request's range, end exclusive."""
    return f"{span.start[:10]} .. {span.end[:10]} (excl.)"


def print_status(items: list[CachedProduct], jobs: Sequence[RecordedJob] = ()) -> None:
    """The cache, then the batch jobs recorded for products still being fetched (if any)."""
    table = _table(
        "Cache status",
        ["dataset", "symbol", "year", "product", "size", "records", "range", "manifest"],
    )
    for item in items:
        span = f"{item.start[:10]} .. {item.end[:10]}" if item.start and item.end else "-"
        records = "-" if item.records is None else f"{item.records:,}"
        table.add_row(
            item.dataset,
            item.symbol,
            str(item.year),
            item.product,
            _megabytes(item.bytes),
            records,
            span,
            item.manifest,
        )
    console = _console()
    console.print(table)
    for item in items:
        if item.problem:
            console.print(f"{item.path}: {item.manifest}: {item.problem}", soft_wrap=True)
    if jobs:
        print_recorded_jobs(console, jobs)


def print_recorded_jobs(console: Console, jobs: Sequence[RecordedJob]) -> None:
    """One row per recorded job (a group's job is recorded once per member product)."""
    from rich.table import Table

    table = Table(
        title="Batch jobs recorded (as recorded here; Databento not asked)", title_justify="left"
    )
    for column in ("job", "state", "age", "cost", "for"):
        table.add_column(column, justify="right" if column in {"age", "cost"} else "left")
    same: dict[tuple[object, ...], list[RecordedJob]] = {}
    for job in jobs:
        mark = job.job_id or (job.submitted_since, job.dataset, job.year, job.product, job.start)
        same.setdefault((job.state, mark), []).append(job)
    for members in same.values():
        first = members[0]
        table.add_row(
            first.job_id or "(submitting)",
            first.state,
            _age_label(first.age_s),
            "-" if first.cost_usd is None else usd(first.cost_usd),
            _job_products(members),
        )
    console.print(table)
    for members in same.values():
        if members[0].problem:
            first = members[0]
            console.print(f"{first.path}: {first.state}: {first.problem}", soft_wrap=True)


def _job_products(members: list[RecordedJob]) -> str:
    """`AAPL 2023 TRADES`, or `TRADES 2023: AAPL, MSFT (of 50 symbols)`."""
    first = members[0]
    if len(members) == 1 and (first.symbols or 1) == 1:
        return f"{first.symbol} {first.year} {first.product}"
    names = ", ".join(member.symbol for member in members[:3])
    more = ", ..." if len(members) > 3 else ""
    shown = first.symbols and first.symbols > len(members)
    total = f" (of {counted(first.symbols, 'symbol')})" if shown else ""
    return f"{first.product} {first.year}: {names}{more}{total}"


def _age_label(seconds: float | None) -> str:
    """`45s`, `12m`, `3h 05m`, `2d 04h`: how long ago a job was submitted."""
    if seconds is None:
        return "-"
    minutes, hours = int(seconds // 60), int(seconds // 3600)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if hours < 1:
        return f"{minutes}m"
    if hours < 24:
        return f"{hours}h {minutes % 60:02d}m"
    return f"{hours // 24}d {hours % 24:02d}h"
