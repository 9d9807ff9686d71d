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


def print_plan(report: IngestReport, symbol: str, year: int) -> None:
    """Dry run: what would be fetched, in how many requests, for how much."""
    table = _table(
        f"Dry run: {symbol} {year} (nothing downloaded)",
        ["product", "status", "range", "chunks", "est. billable", "est. USD"],
    )
    for result in report.results:
        table.add_row(result.product.name, "cached", "-", "-", "-", usd(0))
    for plan in report.plans:
        table.add_row(
            plan.product.name,
            "to download",
            f"{plan.span.start[:10]} .. {plan.span.end[:10]} (excl.)",
            str(len(plan.chunks)),
            _mb(plan.estimated_bytes),
            usd(plan.estimated_usd),
        )
    total = sum(plan.estimated_usd for plan in report.plans)
    table.add_section()
    table.add_row(
        "total", "", "", "", _mb(sum(p.estimated_bytes for p in report.plans)), usd(total)
    )
    _console().print(table)


def print_summary(report: IngestReport, symbol: str, year: int) -> None:
    """After a run: per product what happened, and the estimate against what was received."""
    plans = {plan.product.name: plan for plan in report.plans}
    table = _table(
        f"Summary: {symbol} {year}",
        ["product", "status", "size", "records", "elapsed s", "MB/s", "est. USD", "billed USD"],
    )
    for result in report.results:
        plan = plans.get(result.product.name)
        downloaded = result.status == "downloaded"
        rate = result.bytes / 1e6 / result.elapsed_s if downloaded and result.elapsed_s else 0.0
        estimate = plan.estimated_usd if plan and downloaded else 0.0
        # Databento bills uncompressed DBN bytes: scale the estimate by what actually arrived.
        billed = result.records * result.product.record_size
        actual = estimate * billed / plan.estimated_bytes if plan and plan.estimated_bytes else 0.0
        table.add_row(
            result.product.name,
            result.status,
            _mb(result.bytes),
            f"{result.records:,}",
            f"{result.elapsed_s:.2f}",
            f"{rate:.1f}" if downloaded else "-",
            usd(estimate),
            usd(actual if downloaded else 0.0),
        )
    _console().print(table)


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
