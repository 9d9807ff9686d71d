"""Command line: parse -> set up logging -> settings from the environment -> run -> exit code.

The only module that imports typer; errors raised anywhere below are mapped to exit codes here.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer
from loguru import logger

from backend.jobs.client.retry import MAX_RETRY_AFTER_S
from backend.jobs.core.ranges import counted, normalize_dataset, parse_chunking, parse_products
from backend.jobs.core.request import DEFAULT_GROUP_SIZE, DEFAULT_TIMEOUT_S
from backend.jobs.core.units import (
    DEFAULT_BATCH_ABOVE,
    DEFAULT_BATCH_TIMEOUT,
    parse_duration,
    parse_engine,
    parse_size,
)
from backend.jobs.core.universe import parse_year, symbol_option, universe
from backend.jobs.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    IngestError,
    InvalidInputError,
    StopRequestedError,
)
from backend.jobs.logs import setup_logging, warnings_logged
from backend.jobs.settings import Settings

if TYPE_CHECKING:
    from backend.jobs.cache.inventory import CachedProduct
    from backend.jobs.core.request import IngestRequest
    from backend.jobs.ingest import IngestReport
    from backend.jobs.store.base import Store

EXIT_CODES_HELP = """\b
Exit codes:
  0    success (downloaded, or already cached)
  1    ingestion failed (server error, network, timeout, disk); finished chunks are kept
  2    invalid input (flags, symbol, year, product, dataset, budget)
  3    credentials (DATABENTO_API_KEY missing or rejected)
  129  stopped by SIGHUP (terminal closed); run the same command again to resume
  130  interrupted (Ctrl-C); run the same command again to resume
  143  stopped by SIGTERM (docker stop, systemd, timeout); run it again to resume
A run that ends several ways exits with the first that applies: 3, then 1 (run it
again), then 2 (fix the input); the summary names each symbol-year not fetched and why.
"""

ENV_HELP = """\b
Environment:
  DATABENTO_API_KEY   your key (required to download; never logged)
  DATABENTO_GATEWAY   historical API gateway, HOST:PORT or URL (tests/sandbox)
  DATABENTO_ENGINE    auto, stream or batch (--engine wins)
  DATABENTO_MAX_COST  budget in USD (--max-cost wins)
  DATA_DIR            cache root (default: the repository's data/)
  DASK_SCHEDULER_ADDRESS  a Dask scheduler to run the downloads on (--cluster wins)
"""

app = typer.Typer(
    name="bento-ingest",
    help="Pull a year of Databento TRADES and TBBO for a symbol into a verified local DBN cache.",
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    epilog="Run 'COMMAND --help' for examples, exit codes and environment variables.",
    add_completion=True,
)


DataDirOption = Annotated[
    str | None,
    typer.Option(
        help="Cache root: a folder or s3://BUCKET/PREFIX (a valid S3 bucket name; no "
        "credentials, '?', '#', '.' or '..' in the URL: credentials, region and endpoint come "
        "from the standard AWS configuration) [default: the repository's data/; env DATA_DIR; "
        "empty = default].",
        show_default=False,
    ),
]
DatasetFilterOption = Annotated[
    str | None, typer.Option(help="Only this dataset (e.g. XNAS.ITCH).", show_default=False)
]


def _fail(exc: IngestError) -> typer.Exit:
    logger.error("{}", exc)
    return typer.Exit(exc.exit_code)


def failure_lines(report: IngestReport, request: IngestRequest) -> list[str]:
    """Pure: the stderr lines of a run that did not fetch everything. Each unknown symbol-year
    or year without data on its own line; the error that stopped the downloads once, after the
    symbol-year-products it left (a single symbol-year: the error alone, as ever)."""
    lines = [f"{failure.name}: {failure.message}" for failure in report.plan.failures]
    if report.error is not None:
        names = ", ".join(failure.name for failure in report.unfetched)
        universe_left = request.is_universe and names
        lines.append(f"{names}: {report.error}" if universe_left else str(report.error))
    return lines


@app.command(
    epilog="\b\nExample:\n  python -m backend.jobs.cli data --symbol AAPL --year 2023\n\n"
    + EXIT_CODES_HELP
    + "\n"
    + ENV_HELP,
)
def data(  # noqa: PLR0917  Typer maps each parameter to a flag
    symbol: Annotated[
        str | None,
        typer.Option(
            help="Ticker as Databento spells it (raw_symbol), e.g. AAPL or BRK.B.",
            show_default=False,
        ),
    ] = None,
    year: Annotated[
        str | None, typer.Option(help="Calendar year to fetch, e.g. 2023.", show_default=False)
    ] = None,
    symbols: Annotated[
        str | None,
        typer.Option(
            help="Several tickers, comma-separated (with --symbol: all of them).",
            show_default=False,
        ),
    ] = None,
    symbols_file: Annotated[
        str | None,
        typer.Option(
            help="A file of tickers, one per line; blank lines and # comments ignored; UTF-8 "
            "(a BOM is fine) or UTF-16 with a BOM; at most 1 MB and 100,000 tickers; - reads "
            "standard input.",
            show_default=False,
        ),
    ] = None,
    years: Annotated[
        str | None,
        typer.Option(
            help="Several years: 2021-2023, 2021,2023 or both; every symbol is fetched for each.",
            show_default=False,
        ),
    ] = None,
    group_size: Annotated[
        int,
        typer.Option(
            min=1,
            max=2000,
            help="Symbols fetched together in one request per chunk (a universe run).",
        ),
    ] = DEFAULT_GROUP_SIZE,
    products: Annotated[
        str, typer.Option(help="Comma-separated products, case-insensitive: trades, tbbo.")
    ] = "trades,tbbo",
    dataset: Annotated[str, typer.Option(help="Databento dataset code.")] = "XNAS.ITCH",
    force: Annotated[bool, typer.Option(help="Re-download even if cached.")] = False,
    verify: Annotated[
        bool, typer.Option(help="Re-hash cached files against the manifest before skipping them.")
    ] = False,
    data_dir: DataDirOption = None,
    work_dir: Annotated[
        str | None,
        typer.Option(
            help="With an s3:// data dir: the local folder for parts and files before upload "
            "[default: ~/.cache/bento-ingest/work, or under XDG_CACHE_HOME].",
            show_default=False,
        ),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option(
            help="Historical API gateway, HOST:PORT or URL "
            "[env DATABENTO_GATEWAY; default Databento's].",
            show_default=False,
        ),
    ] = None,
    chunk: Annotated[
        str,
        typer.Option(
            help="Request size: auto (default): by the estimated bytes of each request "
            "(~128 MiB), a whole year when small; or month, week or day (smaller resumes finer)."
        ),
    ] = "auto",
    jobs: Annotated[int, typer.Option(min=1, max=32, help="Concurrent chunk downloads.")] = 4,
    retries: Annotated[
        int,
        typer.Option(
            min=0,
            max=20,
            help="Retries per request (chunk, metadata or symbology) for transient failures; "
            f"a Retry-After above {MAX_RETRY_AFTER_S:.0f}s is not waited for.",
        ),
    ] = 5,
    timeout: Annotated[
        float,
        typer.Option(
            min=1,
            max=600,
            help="Seconds without a byte from the server before a request is given up "
            "(then retried like any transient failure).",
        ),
    ] = DEFAULT_TIMEOUT_S,
    lock_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for another run on the same files.")
    ] = 600.0,
    engine: Annotated[
        str | None,
        typer.Option(
            help="auto: a Databento batch job for each group estimated above --batch-above, "
            "streaming requests otherwise; stream; batch [env DATABENTO_ENGINE; default auto].",
            show_default=False,
        ),
    ] = None,
    batch_above: Annotated[
        str,
        typer.Option(
            help="With --engine auto: the estimated size above which a batch job is used "
            "(e.g. 800MB, 5GB, 2GiB; KB, MB, GB, TB are powers of 1000).",
        ),
    ] = DEFAULT_BATCH_ABOVE,
    batch_timeout: Annotated[
        str,
        typer.Option(
            help="How long to wait for batch jobs to be processed: a number with d, h, m or s "
            "(e.g. 90m, 6h, 1h30m, 1d) or seconds, from 1s to 30d; an unfinished job stays "
            "recorded and the next run picks it up without paying again.",
        ),
    ] = DEFAULT_BATCH_TIMEOUT,
    dry_run: Annotated[
        bool,
        typer.Option(
            help="Print the plan, each group's engine and the cost estimate; download and "
            "submit nothing (metadata only)."
        ),
    ] = False,
    max_cost: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Refuse (exit 2) if the estimated USD for what is not cached exceeds this "
            "[env DATABENTO_MAX_COST].",
            show_default=False,
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Run the downloads on a Dask cluster: tcp://HOST:PORT of its scheduler (workers "
            "need DATABENTO_API_KEY in their own environment and a data dir they all see), or "
            "local[:N] for N worker processes here [env DASK_SCHEDULER_ADDRESS; default: this "
            "process].",
            show_default=False,
        ),
    ] = None,
    log_json: Annotated[bool, typer.Option(help="One JSON object per log line.")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Same as --log-level DEBUG.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only warnings, errors and completion lines.")
    ] = False,
) -> None:
    """Download TRADES and TBBO of a symbol-year into DATA_DIR/raw/databento/SYMBOL/YEAR/.

    Datasets other than XNAS.ITCH go to DATA_DIR/raw/databento/datasets/DATASET/SYMBOL/YEAR/.
    Each product is fetched in chunks (resumable, retried, parallel), or from one Databento batch
    job when estimated above --batch-above (billed once, resumed without paying again), merged
    into one DBN file (zstd) and recorded in manifest.json. A product whose cached file answers
    the same request (dataset, schema, symbol, year) is skipped without any request and without
    the API key. DATA_DIR may be a folder or s3://BUCKET/PREFIX, shared by many machines.
    """
    level = "DEBUG" if verbose else "SUCCESS" if quiet else log_level.upper()
    settings = Settings.from_env(
        gateway=gateway, data_dir=data_dir, max_cost=max_cost, work_dir=work_dir, cluster=cluster
    )
    _start_logging(level, log_json, settings)
    with exit_codes():
        request = ingest_request(
            symbol=symbol,
            symbols=symbols,
            symbols_file=symbols_file,
            year=year,
            years=years,
            group_size=group_size,
            products=products,
            dataset=dataset,
            force=force,
            verify=verify,
            chunk=chunk,
            jobs=jobs,
            retries=retries,
            timeout=timeout,
            lock_timeout=lock_timeout,
            dry_run=dry_run,
            engine=engine,
            batch_above=batch_above,
            batch_timeout=batch_timeout,
        )
        report = _run(request, settings, live=wants_live_progress(quiet, log_json, dry_run))
        print_outcome(report, request, tables=not quiet and not log_json, log_json=log_json)
        if report.exit_code:
            raise typer.Exit(report.exit_code)


def _start_logging(level: str, log_json: bool, settings: Settings) -> None:
    """Logging first, so that even a bad --log-level is reported as one line (exit 2)."""
    secret = settings.api_key.reveal() if settings.api_key else ""
    try:
        level = _valid_level(level)
    except IngestError as exc:
        setup_logging(json_lines=log_json, secrets=[secret])
        raise _fail(exc) from None
    setup_logging(level, json_lines=log_json, secrets=[secret])


def ingest_request(
    *,
    symbol: str | None,
    symbols: str | None,
    symbols_file: str | None,
    year: str | None,
    years: str | None,
    group_size: int,
    products: str,
    dataset: str,
    force: bool,
    verify: bool,
    chunk: str,
    jobs: int,
    retries: int,
    timeout: float,
    lock_timeout: float,
    dry_run: bool,
    engine: str | None,
    batch_above: str,
    batch_timeout: str,
) -> IngestRequest:
    """The flags of `data` checked and turned into one request; bad input raises (exit 2)."""
    from backend.jobs.core.request import IngestRequest

    names, calendar = universe(
        symbol=symbol, symbols=symbols, symbols_file=symbols_file, year=year, years=years
    )
    return IngestRequest(
        symbols=names,
        years=calendar,
        group_size=group_size,
        products=parse_products(products),
        dataset=normalize_dataset(dataset),
        force=force,
        verify=verify,
        chunking=parse_chunking(chunk),
        jobs=jobs,
        retries=retries,
        timeout_s=timeout,
        lock_timeout_s=lock_timeout,
        dry_run=dry_run,
        engine=parse_engine(engine) if engine else None,
        batch_above=parse_size(batch_above),
        batch_timeout_s=parse_duration(batch_timeout),
    )


def wants_live_progress(quiet: bool, log_json: bool, dry_run: bool) -> bool:
    """A live bar only on a terminal, never with --quiet, --log-json or --dry-run."""
    from backend.jobs.cli.progress import wants_progress

    return wants_progress(quiet, log_json) and not dry_run


def _run(request: IngestRequest, settings: Settings, *, live: bool) -> IngestReport:
    """Run the ingest with the terminal progress (if live), stopping cleanly on signals."""
    from backend.jobs.cli.progress import RichProgress
    from backend.jobs.core.progress import NullProgress
    from backend.jobs.ingest import run_ingest

    progress = RichProgress() if live else None
    try:
        with warnings_logged(), stop_on_signals():
            return run_ingest(request, settings, progress=progress or NullProgress())
    finally:
        if progress:
            progress.close()


def print_outcome(
    report: IngestReport, request: IngestRequest, *, tables: bool, log_json: bool
) -> None:
    """The dry-run plan or the summary table, then one stderr line per thing not fetched."""
    from backend.jobs.cli import report as printed

    if request.dry_run and not log_json:
        printed.print_plan(report, request)
    elif tables and (request.is_universe or report.downloaded):
        printed.print_summary(report, request)
    for line in failure_lines(report, request):
        logger.error("{}", line)


@contextlib.contextmanager
def exit_codes() -> Iterator[None]:
    """Expected failures become one line on stderr and their exit code; our bugs surface."""
    try:
        yield
    except IngestError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise _fail(IngestError(f"file system error{where}: {exc.strerror or exc}")) from None
    except KeyboardInterrupt as stopped:
        how, code = "interrupted", EXIT_INTERRUPTED
        if isinstance(stopped, StopRequestedError):
            how, code = f"stopped by {stopped.signal_name}", stopped.exit_code
        logger.error("{}: finished chunks are kept; run the same command again to resume", how)
        raise typer.Exit(code) from None


def _cached(
    symbol: str | None, year: str | None, dataset: str | None, data_dir: str | None
) -> tuple[Store, list[CachedProduct]]:
    """Set up logging, validate the filters, list the cache (its store only, never Databento)."""
    from backend.jobs.cache.inventory import cached_products
    from backend.jobs.store import open_store

    setup_logging()
    try:
        store = open_store(Settings.from_env(data_dir=data_dir).store_location())
        return store, cached_products(
            store,
            symbol_option(symbol, "--symbol") if symbol else None,
            parse_year(year) if year else None,
            normalize_dataset(dataset) if dataset else None,
        )
    except IngestError as exc:
        raise _fail(exc) from None


@app.command(
    epilog="\b\nExamples:\n  python -m backend.jobs.cli status\n"
    "  python -m backend.jobs.cli status --symbol AAPL --json\n\n"
    "\b\nExit codes: 0 listed (even if empty or damaged), "
    "2 invalid input or a data dir that does not exist.",
)
def status(
    symbol: Annotated[str | None, typer.Option(help="Only this symbol.")] = None,
    year: Annotated[str | None, typer.Option(help="Only this year.")] = None,
    dataset: DatasetFilterOption = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List cached products by dataset, symbol and year: size, records, range, manifest state.

    Every file and manifest entry is listed; damaged entries are marked, a file with no entry
    is named by what its own header says it holds. Then the batch jobs recorded for products
    still being fetched: job id, state, age, cost. Reads the data dir only (a folder, or a
    bucket's listing, manifests and job records): no Databento, no API key needed.
    """
    from backend.jobs.cache.inventory import recorded_jobs, status_json
    from backend.jobs.cli.report import print_status

    store, items = _cached(symbol, year, dataset, data_dir)
    try:  # the filters were checked by _cached
        jobs = recorded_jobs(
            store,
            symbol_option(symbol, "--symbol") if symbol else None,
            parse_year(year) if year else None,
            normalize_dataset(dataset) if dataset else None,
        )
    except IngestError as exc:
        raise _fail(exc) from None
    if as_json:
        sys.stdout.write(json.dumps(status_json(store, items, jobs), indent=2) + "\n")
    else:
        print_status(items, jobs)


@app.command(
    epilog="\b\nExample:\n  python -m backend.jobs.cli verify --symbol AAPL --year 2023\n\n"
    "\b\nExit codes: 0 every file matches its manifest, 1 some file or manifest entry does not "
    "(each is named), 2 invalid input or a data dir that does not exist.",
)
def verify(
    symbol: Annotated[str | None, typer.Option(help="Only this symbol.")] = None,
    year: Annotated[str | None, typer.Option(help="Only this year.")] = None,
    dataset: DatasetFilterOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Re-hash every cached file against its manifest and decode its DBN header.

    Objects in a bucket are streamed through the hash, never copied to disk.
    """
    from backend.jobs.cache.inventory import verify_product

    store, items = _cached(symbol, year, dataset, data_dir)
    bad = 0
    for item in items:
        try:
            problem = verify_product(store, item)
        except IngestError as exc:
            raise _fail(exc) from None
        if problem:
            bad += 1
            logger.error("BAD {}: {}", item.path, problem)
        else:
            logger.info("ok  {} ({} bytes, sha256 {})", item.path, item.bytes, item.sha256)
    logger.info("verified {}: {} ok, {} bad", counted(len(items), "file"), len(items) - bad, bad)
    if bad:
        raise typer.Exit(EXIT_FAILED)


@app.command(
    epilog="\b\nExamples:\n  bento-ingest path AAPL 2023\n"
    "  bento-ingest path AAPL 2023 --product tbbo --data-dir s3://bucket/cache\n\n"
    "\b\nExit codes: 0 printed, 1 not cached (the line names the command that fetches it) or "
    "its sha256 does not match the manifest (the line names the file), 2 invalid input.",
)
def path(  # noqa: PLR0917  Typer maps each parameter to an argument or flag
    symbol: Annotated[
        str, typer.Argument(metavar="SYMBOL", help="Ticker, e.g. AAPL.", show_default=False)
    ],
    year: Annotated[
        str, typer.Argument(metavar="YEAR", help="Calendar year, e.g. 2023.", show_default=False)
    ],
    product: Annotated[str, typer.Option(help="trades or tbbo.")] = "trades",
    dataset: Annotated[str, typer.Option(help="Databento dataset code.")] = "XNAS.ITCH",
    data_dir: DataDirOption = None,
    work_dir: Annotated[
        str | None,
        typer.Option(
            help="With an s3:// data dir: where the verified local copy is kept "
            "[default: ~/.cache/bento-ingest/work, or under XDG_CACHE_HOME].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print the local path of a cached file, after checking its sha256 against the manifest.

    For an s3:// data dir: a local copy under the work dir, downloaded once and reused while
    it still matches. Reads the data dir only: no Databento, no API key needed.
    """
    from backend.jobs.api import cached_path

    setup_logging()
    with exit_codes():
        found = cached_path(
            symbol, year, product, dataset=dataset, data_dir=data_dir, work_dir=work_dir
        )
    sys.stdout.write(f"{found}\n")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"bento-ingest {version('bento-ingest')}")
        raise typer.Exit


@app.callback()
def main_options(
    _version_flag: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Pull a year of Databento TRADES and TBBO for a symbol into a verified local DBN cache."""


def _valid_level(level: str) -> str:
    if level not in {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}:
        raise InvalidInputError(f"--log-level {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    return level


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind the run like Ctrl-C does; each handler raises only once.

    A second signal during the clean-up is ignored rather than cutting it short.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        if received:
            return
        received.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise StopRequestedError(signal.Signals(signum).name, 128 + signum)

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, handler) for signum in watched}
    try:
        yield
    finally:
        for signum, old_handler in previous.items():
            signal.signal(signum, old_handler)


def main() -> None:
    """Entry point: usage errors are one line (one JSON line with --log-json), like all others."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors derive from it (typer 0.28)
        if "--log-json" in sys.argv[1:]:
            setup_logging(json_lines=True)
            logger.error("{}", exc.format_message())
        else:
            exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)
