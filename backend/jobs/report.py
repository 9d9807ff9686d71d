"""Tables for people: the dry-run plan, the end-of-run summary and the cache status."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from backend.jobs.ingest import IngestReport
    from backend.jobs.inventory import CachedProduct
    from backend.jobs.plan import TimeRange
    from backend.jobs.preflight import GroupPlan
    from backend.jobs.request import IngestRequest

from backend.jobs.preflight import usd

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


def _mb(size: int | None) -> str:
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
            _range(group.span),
            str(len(group.chunks)),
            _mb(group.estimated_bytes),
            usd(group.estimated_usd),
        )
    table.add_section()
    table.add_row(
        "total", "", "", "", "", _mb(report.plan.estimated_bytes), usd(report.plan.estimated_usd)
    )
    console = _console()
    console.print(table)
    for group in report.plan.groups:
        console.print(f"{group.product.name}: {_engine(group)}", soft_wrap=True)


def print_universe_plan(report: IngestReport, request: IngestRequest) -> None:
    """Dry run of a universe: one row per symbol-year-product, then the requests and the cost."""
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
                _range(m.span),
                str(group.number),
                group.engine,
            ]
            for m in group.members
        ]
    rows += [
        [f.symbol, str(f.year), "-", "unknown / no data", "-", "-", "-"] for f in report.failures
    ]
    table = _table(
        f"Dry run: {len(request.symbols)} symbols x {len(request.years)} years "
        "(nothing downloaded)",
        ["symbol", "year", "product", "status", "range", "group", "engine"],
    )
    shown = rows if len(rows) <= SCREENFUL else [*rows[: SCREENFUL - 5], None, *rows[-5:]]
    for row in shown:
        if row is None:
            table.add_row("...", "", "", f"{len(rows) - SCREENFUL + 5} more rows", "", "", "")
        else:
            table.add_row(*row)
    console = _console()
    console.print(table)
    requests = sum(len(group.chunks) for group in report.plan.groups)
    console.print(
        f"to download: {len(report.plan.members)} symbol-year-products in "
        f"{len(report.plan.groups)} groups, {requests} requests, est. "
        f"{_mb(report.plan.estimated_bytes)} billable, {usd(report.plan.estimated_usd)}; "
        f"cached: {len(report.results)}; unknown or without data: {len(report.failures)}",
        soft_wrap=True,
    )
    for group in report.plan.groups:
        if group.engine == "batch":
            console.print(
                f"group {group.number} ({group.product.name}): {_engine(group)}", soft_wrap=True
            )


def _engine(group: GroupPlan) -> str:
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
        group = groups.get(result.product.name)
        downloaded = result.status == "downloaded"
        rate = result.bytes / 1e6 / result.elapsed_s if downloaded and result.elapsed_s else 0.0
        estimate = group.estimated_usd if group and downloaded else 0.0
        # Databento bills uncompressed DBN bytes: scale the estimate by what actually arrived.
        billed = result.records * result.product.record_size
        ratio = billed / group.estimated_bytes if group and group.estimated_bytes else 0.0
        table.add_row(
            result.product.name,
            result.status,
            _mb(result.bytes),
            f"{result.records:,}",
            f"{result.elapsed_s:.2f}",
            f"{rate:.1f}" if downloaded else "-",
            usd(estimate),
            usd(estimate * ratio if downloaded else 0.0),
        )
    _console().print(table)


def print_universe_summary(report: IngestReport) -> None:
    """After a universe run: counts, and the symbol-years that could not be fetched by name."""
    downloaded = report.downloaded
    console = _console()
    console.print(
        f"Summary: {len(downloaded)} downloaded "
        f"({_mb(sum(result.bytes for result in downloaded))}), "
        f"{len(report.results) - len(downloaded)} cached, "
        f"{len(report.failures)} unknown or without data "
        f"(symbol-year-products; estimate {usd(report.plan.estimated_usd)})",
        soft_wrap=True,
    )
    if report.failures:
        names = ", ".join(f"{f.symbol} {f.year}" for f in report.failures)
        console.print(f"Not fetched: {names}", soft_wrap=True)


def _range(span: TimeRange) -> str:
    return f"{span.start[:10]} .. {span.end[:10]} (excl.)"


def print_status(items: list[CachedProduct]) -> None:
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
            _mb(item.bytes),
            records,
            span,
            item.manifest,
        )
    console = _console()
    console.print(table)
    for item in items:
        if item.problem:
            console.print(f"{item.path}: {item.manifest}: {item.problem}", soft_wrap=True)
