"""invoke tasks: each one a thin call to the Typer CLI, nox, the demo or the benchmarks."""

from __future__ import annotations

import shlex
import sys

from invoke import Context, Exit, task

PYTHON = shlex.quote(sys.executable)
CLI = f"{PYTHON} -m backend.jobs.cli"


def _run(c: Context, command: str) -> None:
    """Run and hand the command's own exit code back (2, 3, 130 ... matter to callers)."""
    result = c.run(command, warn=True, pty=sys.stdout.isatty())
    if result is not None and result.exited:
        raise Exit(code=result.exited)


def _options(**values: object) -> str:
    words = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value not in (None, False, ""):
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


@task(
    help={
        "symbol": "ticker, e.g. AAPL",
        "year": "calendar year, e.g. 2023",
        "symbols": "several tickers, comma-separated, e.g. AAPL,MSFT",
        "symbols_file": "a file of tickers, one per line (# comments)",
        "years": "several years: 2021-2023 or 2021,2023",
        "products": "comma-separated: trades,tbbo",
        "force": "re-download even if cached",
        "dataset": "Databento dataset code (default XNAS.ITCH)",
        "dry_run": "print the plan and the cost estimate, download nothing",
        "engine": "auto (batch job above 5GB estimated), stream or batch",
    }
)
def data(  # noqa: PLR0917
    c,
    symbol="",
    year="",
    symbols="",
    symbols_file="",
    years="",
    products="trades,tbbo",
    force=False,
    dataset="",
    dry_run=False,
    engine="",
):
    """Ingest TRADES and TBBO of symbol-years into data/raw/databento/."""
    options = _options(
        symbol=symbol,
        year=year,
        symbols=symbols,
        symbols_file=symbols_file,
        years=years,
        products=products,
        force=force,
        dataset=dataset,
        dry_run=dry_run,
        engine=engine,
    )
    _run(c, f"{CLI} data {options}")


@task(help={"symbol": "only this symbol", "year": "only this year"})
def status(c, symbol="", year=""):
    """Show what the local cache holds (no network)."""
    _run(c, f"{CLI} status {_options(symbol=symbol, year=year)}")


@task(help={"symbol": "only this symbol", "year": "only this year"})
def verify(c, symbol="", year=""):
    """Re-hash cached files against their manifests."""
    _run(c, f"{CLI} verify {_options(symbol=symbol, year=year)}")


@task(help={"s3": "into a bucket of a local S3 server instead of data/demo/"})
def demo(c, s3=False):
    """Run the real job offline against the bundled sandbox gateway, into data/demo/."""
    _run(c, f"{PYTHON} -m backend.demo{' --s3' if s3 else ''}")


@task(name="demo-cluster")
def demo_cluster(c):
    """A 6-symbol x 2-year universe on a local Dask scheduler and two workers, into a bucket."""
    _run(c, f"{PYTHON} -m backend.demo_cluster")


@task
def lint(c):
    """ruff check and ruff format --check, in nox's isolated environment."""
    _run(c, f"{PYTHON} -m nox -s lint")


@task
def test(c):
    """Lint, then the test suite, each in nox's isolated environment."""
    _run(c, f"{PYTHON} -m nox -s lint tests")


@task
def bench(c):
    """Benchmarks against the sandbox gateway; prints a table of ratios."""
    _run(c, f"{PYTHON} -m bench")
