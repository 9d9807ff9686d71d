"""The sandbox gateway with N synthetic symbols, for the universe scenarios (bench only).

python -m bench.universe_sandbox --state-dir DIR --symbols N [--records-per-day R]
    [--throttle-bytes-per-s B] [--latency-s S] [--available-end YYYY-MM-DD]
    [--prewarm-year Y ...] [--prewarm-schemas trades,tbbo]

`python -m backend.sandbox serve` only knows its default catalog (AAPL, MSFT, BRK.B, NEWCO), so
this builds the same `SandboxGateway` in-process and adds SYM000 ... SYM{N-1:03d}, each listed
for ever under its own instrument_id. Like `serve`, it writes DIR/ca.pem, then DIR/gateway
(atomically, last); on SIGTERM/SIGINT it writes DIR/requests.json (requests per endpoint) and
exits.

--prewarm-year Y builds every symbol-day of Y (--prewarm-schemas) into the sandbox's day cache
before serving (enlarged to hold them): a multi-symbol request cannot use the per-day frame
cache of `serve --prewarm`, and generating records in this one GIL-bound process would
otherwise make the stand-in's CPU, not the network, the bottleneck on a 2-core machine. It
models a remote server whose work does not compete with the client, for both sides alike.
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from backend.sandbox import SandboxGateway, generate_day
from backend.sandbox import records as sandbox_records
from backend.sandbox.__main__ import run_until_stopped

LISTED = (date(2000, 1, 1), date(2100, 1, 1))
FIRST_INSTRUMENT_ID = 10_000


def symbol_names(count: int) -> list[str]:
    return [f"SYM{i:03d}" for i in range(count)]


def prewarm(symbols: list[str], years: list[int], schemas: list[str], records_per_day: int) -> None:
    """Every weekday of `years` of `symbols` into the sandbox's (enlarged) day cache."""
    record_size = {"trades": 48, "tbbo": 80}
    total = sum(record_size[schema] for schema in schemas) * records_per_day * 262
    total *= len(symbols) * len(years)
    # bench only: the module's day cache (64 MiB) replaced by one that holds every day
    sandbox_records._day_cache = sandbox_records._DayCache(int(total * 1.25) + 2**20)
    for year in years:
        day = date(year, 1, 1)
        while day.year == year:
            if day.weekday() < 5:
                for i, symbol in enumerate(symbols):
                    for schema in schemas:
                        generate_day(
                            "XNAS.ITCH",
                            symbol,
                            schema,
                            day,
                            records_per_day,
                            instrument_id=FIRST_INSTRUMENT_ID + i,
                        )
            day += timedelta(days=1)


def _utc_date(text: str) -> datetime:
    day = date.fromisoformat(text)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.universe_sandbox", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--symbols", type=int, required=True, help="SYM000 ... SYM{N-1}")
    parser.add_argument("--records-per-day", type=int, default=20)
    parser.add_argument("--throttle-bytes-per-s", type=float, default=None)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--available-end", type=_utc_date, default=_utc_date("2025-01-01"))
    parser.add_argument("--prewarm-year", type=int, action="append", default=[])
    parser.add_argument("--prewarm-schemas", default="trades,tbbo")
    args = parser.parse_args()

    gateway = SandboxGateway(
        records_per_day=args.records_per_day,
        available_end=args.available_end,
        throttle_bytes_per_s=args.throttle_bytes_per_s,
        latency_s=args.latency_s,
    )
    symbols = symbol_names(args.symbols)
    for i, symbol in enumerate(symbols):
        gateway.add_symbol(symbol, [(*LISTED, FIRST_INSTRUMENT_ID + i)])
    if args.prewarm_year:
        prewarm(symbols, args.prewarm_year, args.prewarm_schemas.split(","), args.records_per_day)
    run_until_stopped(gateway, args.state_dir)


if __name__ == "__main__":
    main()
