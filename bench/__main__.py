"""`python -m bench [--quick] [--only N ...]`: our CLI against the plain SDK, on the sandbox.

Prints scenario | ours | baseline | ratio | target | met? and writes bench/results/latest.json
(the commands' output goes to bench/results/latest.log). Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench import scenarios
from bench.harness import REPO
from bench.scenarios import SCENARIOS, THROTTLE_BYTES_PER_S, Bench, Row

RESULTS = Path(__file__).resolve().parent / "results"


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1/16 of the volumes: a smoke run")
    parser.add_argument(
        "--only", type=int, action="append", choices=sorted(SCENARIOS), help="run scenario N"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per download (median)")
    parser.add_argument("--cached-runs", type=int, default=None, help="runs for scenarios 4 and 13")
    return parser.parse_args()


def format_table(rows: list[Row]) -> str:
    header = ("scenario", "ours", "baseline", "ratio", "target", "met?")
    met = {True: "yes", False: "NO", None: "-"}
    lines = [
        (
            r.scenario,
            r.ours,
            r.baseline,
            f"{r.ratio:.2f}" if r.ratio is not None else "-",
            r.target,
            met[r.met],
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def show(cells: tuple[str, ...]) -> str:
        return " | ".join(
            cell.ljust(width) if i in {0, 4} else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "-+-".join("-" * width for width in widths)
    return "\n".join([show(header), rule, *(show(line) for line in lines)])


def _git_commit() -> str | None:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


def main() -> None:
    args = _parse()
    chosen = args.only or sorted(SCENARIOS)
    cached_runs = args.cached_runs or (3 if args.quick else 5)
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / "latest.log"
    log.write_text("")
    rows: list[Row] = []
    scenario_s: dict[str, float] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as work, contextlib.ExitStack() as stack:
        bench = Bench(
            Path(work), log, quick=args.quick, repeat=args.repeat, cached_runs=cached_runs
        )
        stack.callback(bench.close)  # its servers stop before their folders go
        for number in chosen:
            print(f"scenario {number} ...", end=" ", flush=True)
            begun = time.monotonic()
            rows += SCENARIOS[number](bench)
            scenario_s[str(number)] = round(time.monotonic() - begun, 1)
            print(f"{scenario_s[str(number)]:.0f} s", flush=True)
    print()
    print(format_table(rows))
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(time.monotonic() - started, 1),
        "scenario_elapsed_s": scenario_s,
        "git_commit": _git_commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "options": {
            "quick": args.quick,
            "scenarios": chosen,
            "repeat": args.repeat,
            "cached_runs": cached_runs,
            "throttle_bytes_per_s": THROTTLE_BYTES_PER_S,
            "universe": {
                "symbols": [bench.universe_size(), bench.universe_size(big=True)],
                "records_per_day": scenarios.UNIVERSE_RECORDS_PER_DAY,
                "year": scenarios.UNIVERSE_YEAR,
                "products": scenarios.UNIVERSE_PRODUCTS,
                "latency_s": scenarios.UNIVERSE_LATENCY_S,
                "throttle_bytes_per_s": scenarios.UNIVERSE_THROTTLE_BYTES_PER_S,
            },
            "batch": {
                "throttle_bytes_per_s": scenarios.BATCH_THROTTLE_BYTES_PER_S,
                "processing_s": scenarios.BATCH_PROCESSING_S,
                "jobs": scenarios.BATCH_JOBS,
                "kill_fraction": scenarios.BATCH_KILL_FRACTION,
            },
            "flat": {
                "symbols": scenarios.FLAT_SYMBOLS_QUICK if args.quick else scenarios.FLAT_SYMBOLS,
                "records_per_day": scenarios.FLAT_RECORDS_PER_DAY,
                "variants": {name: list(extra) for name, extra in scenarios.FLAT_VARIANTS.items()},
            },
            "s3": {
                "throttle_bytes_per_s": scenarios.S3_THROTTLE_BYTES_PER_S,
                "data_dir": f"s3://{scenarios.S3_BUCKET}/{scenarios.S3_PREFIX}",
                "server": "moto in server mode, its own process (bench.s3_server)",
            },
        },
        "rows": [asdict(row) for row in rows],
        "measurements": bench.measurements,
    }
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'latest.json'} (command output: {log})")


if __name__ == "__main__":
    main()
