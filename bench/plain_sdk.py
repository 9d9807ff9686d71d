"""The baseline: what a user without our tool writes, one SDK request for the whole year.

python -m bench.plain_sdk --out FILE   (env: DATABENTO_API_KEY, DATABENTO_GATEWAY, CA bundle)

With --symbols, the loop written by hand for a universe: one `get_range(path=)` per
symbol-year-product, in sequence, into OUT_DIR/SYMBOL/YEAR/PRODUCT.dbn.zst:

python -m bench.plain_sdk --out-dir DIR --symbols A,B,... [--years 2023] [--schemas trades,tbbo]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import databento


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="where the DBN stream is written")
    where.add_argument("--out-dir", help="the loop: OUT_DIR/SYMBOL/YEAR/PRODUCT.dbn.zst")
    parser.add_argument("--symbol", default="AAPL")
    parser.add_argument("--year", type=int, default=2023)
    parser.add_argument("--symbols", help="the loop: comma-separated symbols")
    parser.add_argument("--years", default=None, help="the loop: comma-separated years")
    parser.add_argument("--schemas", default="trades", help="the loop: comma-separated schemas")
    args = parser.parse_args()
    gateway = os.environ["DATABENTO_GATEWAY"]
    client = databento.Historical(
        os.environ["DATABENTO_API_KEY"],
        gateway=gateway if "://" in gateway else f"https://{gateway}",
    )
    if args.out:
        client.timeseries.get_range(
            dataset="XNAS.ITCH",
            symbols=[args.symbol],
            schema="trades",
            start=f"{args.year}-01-01",
            end=f"{args.year + 1}-01-01",
            path=args.out,
        )
        return
    symbols = (args.symbols or args.symbol).split(",")
    years = [int(year) for year in (args.years or str(args.year)).split(",")]
    for symbol in symbols:
        for year in years:
            for schema in args.schemas.split(","):
                out = Path(args.out_dir, symbol, str(year), f"{schema.upper()}.dbn.zst")
                out.parent.mkdir(parents=True, exist_ok=True)
                client.timeseries.get_range(
                    dataset="XNAS.ITCH",
                    symbols=[symbol],
                    schema=schema,
                    start=f"{year}-01-01",
                    end=f"{year + 1}-01-01",
                    path=out,
                )


if __name__ == "__main__":
    main()
