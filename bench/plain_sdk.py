"""The baseline: what a user without our tool writes, one SDK request for the whole year.

python -m bench.plain_sdk --out FILE   (env: DATABENTO_API_KEY, DATABENTO_GATEWAY, CA bundle)
"""

from __future__ import annotations

import argparse
import os

import databento


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="where the DBN stream is written")
    parser.add_argument("--symbol", default="AAPL")
    parser.add_argument("--year", type=int, default=2023)
    args = parser.parse_args()
    gateway = os.environ["DATABENTO_GATEWAY"]
    client = databento.Historical(
        os.environ["DATABENTO_API_KEY"],
        gateway=gateway if "://" in gateway else f"https://{gateway}",
    )
    client.timeseries.get_range(
        dataset="XNAS.ITCH",
        symbols=[args.symbol],
        schema="trades",
        start=f"{args.year}-01-01",
        end=f"{args.year + 1}-01-01",
        path=args.out,
    )


if __name__ == "__main__":
    main()
