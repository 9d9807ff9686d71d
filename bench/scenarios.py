"""The comparisons; each measured command runs in its own process against a fresh sandbox.

1-4: one symbol-year of AAPL (`python -m backend.sandbox serve`). 5-7: a universe of synthetic
symbols SYM000... (`python -m bench.universe_sandbox`), with the query latency and per-connection
bandwidth of a remote service. 8-10: the same AAPL year through `--engine batch` (a Databento
batch job, its files downloaded) against `--engine stream`, at a remote service's bandwidth.
11-13: the same AAPL year into an S3 bucket (`--data-dir s3://...`, a local S3 server in its own
process: `python -m bench.s3_server`) against a local data dir, at a remote service's bandwidth.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from bench.harness import (
    PYTHON,
    REPO,
    BenchError,
    Finished,
    Gateway,
    Measurement,
    S3Server,
    import_argv,
    loop_argv,
    measure,
    median_of,
    ours_argv,
    plain_argv,
    run_watched,
    s3_server,
    sandbox,
    sandbox_batch_jobs,
    server_request_log,
    server_requests,
    single_argv,
    universe_argv,
    universe_sandbox,
)

PREBUILT_YEAR = "XNAS.ITCH/AAPL/trades/2023"
RECORDS_PER_GIB = 86_000  # 48-byte trades x 260 weekdays of 2023 ~= 1 GiB uncompressed
THROTTLE_BYTES_PER_S = 20_000_000  # per connection, on the compressed body
QUICK_DIVISOR = 16
RSS_LIMIT_MB = 200.0

# The universe (scenarios 5-7): small symbols, a remote service's latency and bandwidth.
UNIVERSE_SYMBOLS = 30
UNIVERSE_SYMBOLS_BIG = 300
UNIVERSE_SYMBOLS_QUICK = 8  # and 10x that for the big one
UNIVERSE_RECORDS_PER_DAY = 50  # a symbol-year: ~0.29 MB of trades, ~0.42 MB of tbbo (zstd)
UNIVERSE_YEAR = 2023
UNIVERSE_PRODUCTS = "trades,tbbo"
UNIVERSE_LATENCY_S = 0.25  # before the first byte of every get_range answer
UNIVERSE_THROTTLE_BYTES_PER_S = 10_000_000  # per connection
UNIVERSE_SPEEDUP_TARGET = 10.0
UNIVERSE_RSS_LIMIT_MB = 250.0
GET_RANGE = "timeseries.get_range"

# The batch engine (scenarios 8-10): the AAPL year of 1-4, at a remote service's bandwidth.
BATCH_THROTTLE_BYTES_PER_S = 10_000_000  # per connection: get_range bodies and job files alike
BATCH_PROCESSING_S = 2.0  # the stand-in's processing time of a job; excluded from our time
BATCH_JOBS = 4  # --jobs: files (or chunks) downloaded at once
BATCH_RATIO_TARGET = 1.2  # batch wall excluding the wait for the job, over stream wall
BATCH_KILL_FRACTION = 0.5  # scenario 9: SIGKILL once this much of the job's bytes is on disk
SUBMIT, LIST_FILES, DOWNLOAD = "batch.submit_job", "batch.list_files", "batch/download"

# An S3 bucket as the data dir (scenarios 11-13): the AAPL year of 1-4, the same bandwidth as 8-10.
S3_THROTTLE_BYTES_PER_S = 10_000_000  # per connection
S3_BUCKET, S3_PREFIX = "bench", "cache"
S3_WALL_TARGET = 1.3  # s3 wall over local wall, downloading the year
S3_RSS_LIMIT_MB = 250.0
S3_CACHED_TARGET = 3.0  # s3 cached re-run over the local cached re-run (medians)
TRADES_KEY = "raw/databento/AAPL/2023/TRADES.dbn.zst"

# The flat cost per symbol-year (scenario 14): tiny symbol-years of trades, a warm stand-in with
# no latency or throttle, so what is measured is the client's own work per symbol-year-product.
FLAT_SYMBOLS = (100, 1_000, 3_000)
FLAT_SYMBOLS_QUICK = (10, 100, 300)
FLAT_RECORDS_PER_DAY = 20  # ~0.14 MB of zstd trades per symbol-year
FLAT_CPU_TARGET_MS = 3.0  # client CPU per symbol-year-product
FLAT_GROWTH_TARGET = 10.5  # wall of 10x the symbols over the wall of 1x
# How the universe command runs: in this process, or (a hook for the cluster runner) e.g.
# {"--cluster local:2": ("--cluster", "local:2")}; each variant gets its own rows.
FLAT_VARIANTS: dict[str, tuple[str, ...]] = {
    "in-process": (),
    "--cluster local:2": ("--cluster", "local:2"),
}
CLUSTER_LOCAL = ("--cluster", "local")  # scenario 5's cluster row: one worker per core
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Row:
    scenario: str
    ours: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None  # None: information only


def _s(run: Measurement) -> str:
    return f"{run.wall_s:.2f} s"


def _mb(run: Measurement) -> str:
    return f"{run.peak_rss_mb:.0f} MB"


@dataclass(frozen=True)
class UniverseRun:
    """One side of a universe comparison: its median run, its files and its get_range count."""

    run: Measurement
    files: Path  # SYMBOL/YEAR/PRODUCT.dbn.zst below it
    get_range: int


@dataclass(frozen=True)
class EngineRun:
    """Our CLI through one engine over the AAPL year: its median run, the median wait for the
    batch job (submit_job to our first list_files; 0 for stream) and its data dir."""

    run: Measurement
    wait_s: float
    data_dir: Path

    @property
    def excluding_wait_s(self) -> float:
        return self.run.wall_s - self.wait_s


@dataclass(frozen=True)
class StoreRun:
    """Our CLI over the AAPL year into one kind of data dir ("s3" or "local"): its median run,
    the data dir as passed (an s3:// URL or a folder), where the final file is, and the
    `--work-dir` of a bucket's run."""

    run: Measurement
    data_dir: str
    trades: Path | str  # the local file, or the object's key in the bucket
    work_dir: Path | None
    upload_s: float = 0.0  # median: from the first upload request to CompleteMultipartUpload
    complete_s: float = 0.0  # median: the S3 server's time answering CompleteMultipartUpload

    @property
    def excluding_complete_s(self) -> float:
        return self.run.wall_s - self.complete_s


class Bench:
    """Runs scenarios, sharing the downloads they have in common (memoized by volume).

    The local S3 server of scenarios 11-13 lives until `close()`: the cached re-runs of 13 read
    what 11 uploaded.
    """

    def __init__(self, work: Path, log: Path, *, quick: bool, repeat: int, cached_runs: int):
        self.work, self.log = work, log
        self.quick, self.repeat, self.cached_runs = quick, repeat, cached_runs
        self.measurements: dict[str, Any] = {}
        self._ours: dict[int, tuple[Measurement, Path]] = {}
        self._universe: dict[tuple[str, int, bool], UniverseRun] = {}
        self._engine: dict[tuple[str, int], EngineRun] = {}
        self._store: dict[tuple[str, int], StoreRun] = {}
        self._s3: S3Server | None = None
        self._s3_stack = contextlib.ExitStack()
        self._ids = itertools.count(1)

    def close(self) -> None:
        """Stop the local S3 server, if one runs."""
        self._s3_stack.close()
        self._s3 = None

    def records_per_day(self, gib: float) -> int:
        return round(RECORDS_PER_GIB * gib / (QUICK_DIVISOR if self.quick else 1))

    def volume(self, records_per_day: int) -> str:
        return f"{records_per_day * 48 * 260 / 2**30:.2g} GiB"

    def _path(self, name: str) -> Path:
        return self.work / f"{next(self._ids):02d}-{name}"

    def _download(
        self, kind: str, records_per_day: int, throttle: int | None, *, prebuilt: bool = False
    ) -> tuple[Measurement, Path]:
        """Median of `repeat` runs of our tool or of the plain SDK, each on a fresh sandbox."""
        runs: list[Measurement] = []
        target: Path | None = None
        for _ in range(self.repeat):
            if target is not None:  # keep only the last run's output on disk
                _remove(target)
            with sandbox(
                self._path("server"),
                records_per_day=records_per_day,
                throttle_bytes_per_s=throttle,
                prebuilt=PREBUILT_YEAR if prebuilt else None,
            ) as gateway:
                if kind == "ours":
                    target = self._path("data")
                    argv = ours_argv(target, force=True)
                else:
                    target = self._path("plain.dbn.zst")
                    argv = plain_argv(target)
                runs.append(measure(argv, env=gateway.env(), log=self.log))
        result = median_of(runs)
        key = f"{kind} records_per_day={records_per_day} throttle={throttle} prebuilt={prebuilt}"
        self.measurements[key] = {
            "median": result.as_json(),
            "runs": [run.as_json() for run in runs],
            "output_bytes": _output_bytes(target),
            "records": _manifest_records(target) if kind == "ours" else None,
        }
        return result, target

    def ours(self, records_per_day: int) -> tuple[Measurement, Path]:
        if records_per_day not in self._ours:
            self._ours[records_per_day] = self._download("ours", records_per_day, None)
        return self._ours[records_per_day]

    def plain(
        self, records_per_day: int, throttle: int | None = None, *, prebuilt: bool = False
    ) -> Measurement:
        return self._download("plain", records_per_day, throttle, prebuilt=prebuilt)[0]

    # the scenarios

    def year_vs_plain(self) -> list[Row]:
        rpd = self.records_per_day(1)
        ours, _ = self.ours(rpd)
        plain = self.plain(rpd)
        ratio = ours.wall_s / plain.wall_s
        name = f"1. {self.volume(rpd)} year, wall (ours/plain)"
        return [
            Row(name, _s(ours), _s(plain), ratio, "<= 1.5", ratio <= 1.5),
            Row(
                f"1. {self.volume(rpd)} year, peak RSS (ours/plain)",
                _mb(ours),
                _mb(plain),
                ours.peak_rss_mb / plain.peak_rss_mb,
                "-",
                None,
            ),
        ]

    def throttled(self) -> list[Row]:
        """The network model: the stand-in serves prebuilt frames, so only bandwidth counts.

        A second row keeps the stand-in compressing live, where its CPU competes with ours.
        """
        rpd = self.records_per_day(1)
        throttle = THROTTLE_BYTES_PER_S
        rows = []
        for prebuilt, label, target in ((True, "", ">= 3"), (False, ", live stand-in", "-")):
            ours, _ = self._download("ours", rpd, throttle, prebuilt=prebuilt)
            plain = self.plain(rpd, throttle, prebuilt=prebuilt)
            ratio = plain.wall_s / ours.wall_s
            name = f"2. {self.volume(rpd)} at {throttle / 1e6:.0f} MB/s/conn{label} (plain/ours)"
            met = ratio >= 3 if prebuilt else None
            rows.append(Row(name, _s(ours), _s(plain), ratio, target, met))
        return rows

    def flat_memory(self) -> list[Row]:
        small_rpd, big_rpd = self.records_per_day(1), self.records_per_day(4)
        small, _ = self.ours(small_rpd)
        big, _ = self.ours(big_rpd)
        ratio = big.peak_rss_mb / small.peak_rss_mb
        met = abs(ratio - 1) <= 0.10 and max(big.peak_rss_mb, small.peak_rss_mb) <= RSS_LIMIT_MB
        name = f"3. peak RSS ours, {self.volume(big_rpd)} (ours) vs {self.volume(small_rpd)} (base)"
        return [Row(name, _mb(big), _mb(small), ratio, "<= 1.10, <= 200 MB", met)]

    def _no_gateway_env(self) -> dict[str, str]:
        """No gateway listens there: a request would fail the run instead of going unnoticed."""
        return Gateway("127.0.0.1:9", self.work / "no-ca.pem").env()

    def _interleaved(
        self, commands: list[tuple[list[str], dict[str, str]]]
    ) -> list[list[Measurement]]:
        """Each (argv, env) once to warm up (bytecode and file caches), then `cached_runs`
        rounds of all of them, interleaved so drifting load hits each alike: runs per command."""
        for argv, env in commands:
            measure(argv, env=env, log=self.log)
        runs: list[list[Measurement]] = [[] for _ in commands]
        for _ in range(self.cached_runs):
            for (argv, env), mine in zip(commands, runs, strict=True):
                mine.append(measure(argv, env=env, log=self.log))
        return runs

    def cached_rerun(self) -> list[Row]:
        _, data_dir = self.ours(self.records_per_day(1))
        env = self._no_gateway_env()
        ours_cmd, import_cmd = ours_argv(data_dir, force=False), import_argv()
        ours_runs, import_runs = self._interleaved([(ours_cmd, env), (import_cmd, env)])
        ours, baseline = median_of(ours_runs), median_of(import_runs)
        self.measurements["cached re-run"] = {
            "ours": [run.as_json() for run in ours_runs],
            "import typer, loguru": [run.as_json() for run in import_runs],
        }
        imported = "databento" in imported_modules(ours_cmd, env, ["databento"])
        self.measurements["cached re-run imports databento"] = imported
        ratio = ours.wall_s / baseline.wall_s
        name = f"4. cached re-run vs import typer+loguru (median of {self.cached_runs})"
        note = " (imports databento!)" if imported else ""
        return [
            Row(name + note, _s(ours), _s(baseline), ratio, "<= 2", ratio <= 2 and not imported)
        ]

    # the universe scenarios

    def universe_size(self, *, big: bool = False) -> int:
        small = UNIVERSE_SYMBOLS_QUICK if self.quick else UNIVERSE_SYMBOLS
        if not big:
            return small
        return 10 * UNIVERSE_SYMBOLS_QUICK if self.quick else UNIVERSE_SYMBOLS_BIG

    def universe(self, kind: str, symbols: int, *, prewarm: bool = True) -> UniverseRun:
        """`kind` over SYM000..: "ours" (one universe command), "ours-cluster" (the same with
        --cluster local), "loop" (the plain SDK by hand, one process) or "singles" (our
        single-symbol command once per symbol, in sequence).

        Median of `repeat` runs, each on a fresh sandbox; memoized. `prewarm`: the stand-in
        built its records before serving (see bench.universe_sandbox), else generates live.
        """
        key = (kind, symbols, prewarm)
        if key in self._universe:
            return self._universe[key]
        names = [f"SYM{i:03d}" for i in range(symbols)]
        runs: list[Measurement] = []
        target: Path | None = None
        requests: dict[str, int] = {}
        for _ in range(self.repeat):
            if target is not None:  # keep only the last run's output on disk
                _remove(target)
            state_dir = self._path("universe-server")
            with universe_sandbox(
                state_dir,
                symbols=symbols,
                records_per_day=UNIVERSE_RECORDS_PER_DAY,
                throttle_bytes_per_s=UNIVERSE_THROTTLE_BYTES_PER_S,
                latency_s=UNIVERSE_LATENCY_S,
                prewarm_years=[UNIVERSE_YEAR] if prewarm else [],
            ) as gateway:
                target = self._path(f"{kind}-{symbols}")
                runs.append(self._run_universe(kind, names, target, gateway))
            requests = server_requests(state_dir)
        assert target is not None
        files = target / "raw" / "databento" if kind != "loop" else target
        result = UniverseRun(median_of(runs), files, requests.get(GET_RANGE, 0))
        self.measurements[f"universe {kind} symbols={symbols} prewarm={prewarm}"] = {
            "median": result.run.as_json(),
            "runs": [run.as_json() for run in runs],
            "records_per_day": UNIVERSE_RECORDS_PER_DAY,
            "products": UNIVERSE_PRODUCTS,
            "files": sum(1 for _ in _dbn_files(files)),
            "output_bytes": sum(path.stat().st_size for _, path in _dbn_files(files)),
            "requests": requests,
        }
        self._universe[key] = result
        return result

    def _run_universe(
        self, kind: str, names: list[str], target: Path, gateway: Gateway
    ) -> Measurement:
        env = gateway.env()
        year, products = UNIVERSE_YEAR, UNIVERSE_PRODUCTS
        if kind == "loop":
            argv = loop_argv(target, names, schemas=products, year=year)
            return measure(argv, env=env, log=self.log)
        if kind in {"ours", "ours-cluster"}:
            symbols: list[str] | Path = names
            if len(names) > UNIVERSE_SYMBOLS:  # nobody types 300 tickers: a symbols file
                symbols = self.work / f"symbols-{len(names)}.txt"
                symbols.write_text("".join(f"{name}\n" for name in names))
            argv = universe_argv(target, symbols, products=products, year=year)
            extra = CLUSTER_LOCAL if kind == "ours-cluster" else ()
            return measure([*argv, *extra], env=env, log=self.log)
        runs = [
            measure(single_argv(target, name, products=products, year=year), env=env, log=self.log)
            for name in names
        ]
        return Measurement(sum(r.wall_s for r in runs), max(r.peak_rss_mb for r in runs))

    def _universe_label(self, symbols: int) -> str:
        return f"{symbols} sym x {UNIVERSE_YEAR} {UNIVERSE_PRODUCTS.replace(',', '+')}"

    def universe_vs_loop(self) -> list[Row]:
        """Ours against the loop by hand, and whether every file is the loop's, decoded."""
        n = self.universe_size()
        net = (
            f"{UNIVERSE_LATENCY_S:g} s latency, {UNIVERSE_THROTTLE_BYTES_PER_S / 1e6:.0f} MB/s/conn"
        )
        rows = []
        for prewarm, label, target in (
            (True, "", f">= {UNIVERSE_SPEEDUP_TARGET:g}"),
            (False, ", live stand-in", "-"),
        ):
            ours = self.universe("ours", n, prewarm=prewarm)
            loop = self.universe("loop", n, prewarm=prewarm)
            ratio = loop.run.wall_s / ours.run.wall_s
            met = ratio >= UNIVERSE_SPEEDUP_TARGET if prewarm else None
            name = f"5. {self._universe_label(n)}, {net}{label} (loop/ours)"
            rows.append(Row(name, _s(ours.run), _s(loop.run), ratio, target, met))
            if prewarm:
                equal, compared, note = compare_files(ours.files, loop.files)
                self.measurements[f"universe files equal symbols={n}"] = {
                    "equal": equal,
                    "compared": compared,
                    "problems": note,
                }
                same = equal == compared and not note
                cluster = self.universe("ours-cluster", n)
                rows.append(
                    Row(
                        f"5. {self._universe_label(n)}, {net}, --cluster local (loop/ours)",
                        _s(cluster.run),
                        _s(loop.run),
                        loop.run.wall_s / cluster.run.wall_s,
                        f">= {UNIVERSE_SPEEDUP_TARGET:g}",
                        loop.run.wall_s / cluster.run.wall_s >= UNIVERSE_SPEEDUP_TARGET,
                    )
                )
                rows.append(
                    Row(
                        f"5. files equal, decoded (ours vs loop){': ' + note[0] if note else ''}",
                        "yes" if same else "no",
                        f"{equal}/{compared} files",
                        None,
                        "all",
                        same,
                    )
                )
        return rows

    def universe_vs_singles(self) -> list[Row]:
        """Ours against our own single-symbol command run once per symbol, in sequence."""
        n = self.universe_size()
        ours = self.universe("ours", n)
        singles = self.universe("singles", n)
        ratio = singles.run.wall_s / ours.run.wall_s
        return [
            Row(
                f"6. {self._universe_label(n)}: universe vs {n} single-symbol runs (singles/ours)",
                _s(ours.run),
                _s(singles.run),
                ratio,
                "-",
                None,
            ),
            Row(
                "6. get_range requests (singles/ours)",
                str(ours.get_range),
                str(singles.get_range),
                singles.get_range / ours.get_range if ours.get_range else None,
                "-",
                None,
            ),
        ]

    def universe_memory(self) -> list[Row]:
        """Peak RSS of the universe command, 10x the symbols (same per-symbol volume)."""
        small_n, big_n = self.universe_size(), self.universe_size(big=True)
        small = self.universe("ours", small_n).run
        big = self.universe("ours", big_n).run
        ratio = big.peak_rss_mb / small.peak_rss_mb
        met = max(big.peak_rss_mb, small.peak_rss_mb) <= UNIVERSE_RSS_LIMIT_MB
        name = (
            f"7. peak RSS ours, {big_n} (ours) vs {small_n} (base) sym x "
            f"{UNIVERSE_YEAR} {UNIVERSE_PRODUCTS.replace(',', '+')}"
        )
        return [Row(name, _mb(big), _mb(small), ratio, f"<= {UNIVERSE_RSS_LIMIT_MB:.0f} MB", met)]

    # the flat cost per symbol-year

    def flat_cost(self) -> list[Row]:
        """Client CPU and wall per symbol-year-product at 100, 1,000 and 3,000 tiny symbols
        (the default --chunk auto, trades), and the wall's growth from 100 to 1,000."""
        sizes = FLAT_SYMBOLS_QUICK if self.quick else FLAT_SYMBOLS
        state_dir = self._path("flat-server")
        with universe_sandbox(
            state_dir,
            symbols=max(sizes),
            records_per_day=FLAT_RECORDS_PER_DAY,
            throttle_bytes_per_s=None,
            latency_s=0.0,
            prewarm_years=[UNIVERSE_YEAR],
            prewarm_schemas="trades",
        ) as gateway:
            rows: list[Row] = []
            for variant, extra in FLAT_VARIANTS.items():
                self._flat_run(gateway, 5, extra)  # warm: bytecode, page cache, the stand-in
                runs = {n: self._flat_run(gateway, n, extra) for n in sizes}
                rows += self._flat_rows(variant, runs)
        return rows

    def _flat_run(self, gateway: Gateway, symbols: int, extra: tuple[str, ...]) -> Measurement:
        names = [f"SYM{i:03d}" for i in range(symbols)]
        listed = self.work / f"flat-symbols-{symbols}.txt"
        listed.write_text("".join(f"{name}\n" for name in names))
        target = self._path(f"flat-{symbols}")
        argv = universe_argv(target, listed, products="trades", year=UNIVERSE_YEAR)
        run = measure([*argv, *extra], env=gateway.env(), log=self.log)
        files = sum(1 for _ in _dbn_files(target / "raw" / "databento"))
        if files != symbols:
            raise BenchError(f"flat cost: {files} files for {symbols} symbols; see {self.log}")
        _remove(target)
        self.measurements[f"flat cost symbols={symbols} {' '.join(extra) or 'in-process'}"] = {
            **run.as_json(),
            "cpu_ms_per_symbol_year_product": round(1000 * run.own_cpu_s / symbols, 2),
            "cpu_ms_per_symbol_year_product_with_workers": round(1000 * run.cpu_s / symbols, 2),
            "wall_ms_per_symbol_year_product": round(1000 * run.wall_s / symbols, 2),
            "records_per_day": FLAT_RECORDS_PER_DAY,
        }
        return run

    def _flat_rows(self, variant: str, runs: dict[int, Measurement]) -> list[Row]:
        rows = []
        for n, run in runs.items():
            cpu_ms, wall_ms = 1000 * run.own_cpu_s / n, 1000 * run.wall_s / n
            name = f"14. {n:,} tiny sym x {UNIVERSE_YEAR} trades, {variant}: per sym-year-product"
            ours = f"{cpu_ms:.1f} ms client CPU"
            met = cpu_ms <= FLAT_CPU_TARGET_MS
            rows.append(Row(name, ours, f"{wall_ms:.1f} ms wall", None, "<= 3 ms CPU", met))
        small, big = sorted(runs)[:2]
        ratio = runs[big].wall_s / runs[small].wall_s
        marginal_ms = 1000 * (runs[big].own_cpu_s - runs[small].own_cpu_s) / (big - small)
        rows.append(
            Row(
                f"14. marginal CPU per sym-year-product, {small:,} -> {big:,} symbols, {variant}",
                f"{marginal_ms:.1f} ms CPU",
                "-",
                None,
                "<= 3 ms CPU",
                marginal_ms <= FLAT_CPU_TARGET_MS,
            )
        )
        rows.append(
            Row(
                f"14. wall {big:,} / {small:,} symbols, {variant}",
                _s(runs[big]),
                _s(runs[small]),
                ratio,
                f"<= {FLAT_GROWTH_TARGET:g}",
                ratio <= FLAT_GROWTH_TARGET,
            )
        )
        return rows

    # the batch engine scenarios

    def engine_year(self, engine: str) -> EngineRun:
        """Our CLI, `--engine ENGINE --force` into a fresh data dir, on a fresh prebuilt sandbox
        at BATCH_THROTTLE_BYTES_PER_S per connection; median of `repeat` runs; memoized.

        The batch job's wait (its processing time, and the poll that sees it done) is read from
        the sandbox's request log: from the submit_job request to our first list_files.
        """
        rpd = self.records_per_day(1)
        key = (engine, rpd)
        if key in self._engine:
            return self._engine[key]
        runs: list[Measurement] = []
        waits: list[float] = []
        requests: dict[str, int] = {}
        target: Path | None = None
        for _ in range(self.repeat):
            if target is not None:  # keep only the last run's output on disk
                _remove(target)
            state_dir = self._path(f"{engine}-server")
            with self._batch_sandbox(state_dir, rpd) as gateway:
                target = self._path(f"{engine}-data")
                argv = ours_argv(target, force=True, engine=engine, jobs=BATCH_JOBS)
                runs.append(measure(argv, env=gateway.env(), log=self.log))
            log = server_request_log(state_dir)
            waits.append(job_wait_s(log) if engine == "batch" else 0.0)
            requests = server_requests(state_dir)
        assert target is not None
        result = EngineRun(median_of(runs), statistics.median(waits), target)
        self.measurements[f"engine {engine} records_per_day={rpd}"] = {
            "median": result.run.as_json(),
            "runs": [run.as_json() for run in runs],
            "job_wait_s": [round(wait, 4) for wait in waits],
            "wall_excluding_wait_s": [
                round(run.wall_s - wait, 4) for run, wait in zip(runs, waits, strict=True)
            ],
            "throttle_bytes_per_s": BATCH_THROTTLE_BYTES_PER_S,
            "batch_processing_s": BATCH_PROCESSING_S,
            "jobs": BATCH_JOBS,
            "output_bytes": _output_bytes(target),
            "records": _manifest_records(target),
            "requests": requests,
        }
        self._engine[key] = result
        return result

    def _batch_sandbox(
        self, state_dir: Path, records_per_day: int
    ) -> AbstractContextManager[Gateway]:
        return sandbox(
            state_dir,
            records_per_day=records_per_day,
            throttle_bytes_per_s=BATCH_THROTTLE_BYTES_PER_S,
            prebuilt=PREBUILT_YEAR,
            batch_processing_s=BATCH_PROCESSING_S,
        )

    def _batch_label(self) -> str:
        rpd = self.records_per_day(1)
        return f"{self.volume(rpd)} year at {BATCH_THROTTLE_BYTES_PER_S / 1e6:.0f} MB/s/conn"

    def batch_vs_stream(self) -> list[Row]:
        """`--engine batch` against `--engine stream`: wall time without the job's wait, and
        whether both files decode to the same records."""
        batch, stream = self.engine_year("batch"), self.engine_year("stream")
        label = self._batch_label()
        ratio = batch.excluding_wait_s / stream.run.wall_s
        equal, compared, problems = compare_files(_raw(batch.data_dir), _raw(stream.data_dir))
        same = equal == compared == 1 and not problems
        self.measurements["engine batch vs stream files equal"] = {
            "equal": equal,
            "compared": compared,
            "problems": problems,
        }
        return [
            Row(
                f"8. {label}, wall incl. {batch.wait_s:.2f} s job wait (batch/stream)",
                _s(batch.run),
                _s(stream.run),
                batch.run.wall_s / stream.run.wall_s,
                "-",
                None,
            ),
            Row(
                f"8. {label}, wall excl. the job wait (batch/stream)",
                f"{batch.excluding_wait_s:.2f} s",
                _s(stream.run),
                ratio,
                f"<= {BATCH_RATIO_TARGET:g}",
                ratio <= BATCH_RATIO_TARGET,
            ),
            Row(
                "8. files equal, decoded (batch vs stream)"
                + (f": {problems[0]}" if problems else ""),
                "yes" if same else "no",
                f"{equal}/{compared} files",
                None,
                "equal",
                same,
            ),
        ]

    def batch_resume(self) -> list[Row]:
        """`--engine batch --jobs 4` killed with SIGKILL once half the job's bytes are on disk,
        then the same command again: what it downloads again, and whether it submits again."""
        rpd = self.records_per_day(1)
        state_dir, data_dir = self._path("resume-server"), self._path("resume-data")
        argv = ours_argv(data_dir, force=False, engine="batch", jobs=BATCH_JOBS)
        downloads = data_dir / "raw" / "databento" / ".batch"
        with self._batch_sandbox(state_dir, rpd) as gateway:
            env = gateway.env()

            def half_on_disk() -> bool:
                total = _job_data_bytes(state_dir)
                if total is None:  # the job's files are not written yet
                    return False
                return _bytes_on_disk(downloads) >= total * BATCH_KILL_FRACTION

            first = run_watched(argv, env=env, log=self.log, kill_when=half_on_disk)
            held = _bytes_on_disk(downloads)
            held_files = {path.name: path.stat().st_size for path in _job_downloads(downloads)}
            rerun_from_ns = time.time_ns()
            rerun = run_watched(argv, env=env, log=self.log)
        sizes = _job_data_sizes(state_dir)
        log = server_request_log(state_dir)
        total, largest = sum(sizes.values()), max(sizes.values(), default=0)
        later = [request for request in log if request["at_ns"] >= rerun_from_ns]
        fetched = sum(
            sizes[request["params"]["filename"]] - _range_start(request["params"].get("range"))
            for request in later
            if request["endpoint"] == DOWNLOAD
        )
        again = fetched - (total - held)
        submits = [sum(1 for r in part if r["endpoint"] == SUBMIT) for part in (log, later)]
        new_submits = submits[1]
        stream = self.engine_year("stream")
        equal, compared, problems = compare_files(_raw(data_dir), _raw(stream.data_dir))
        same = rerun.exit_code == 0 and equal == compared == 1 and not problems
        self.measurements["batch kill -9 and re-run"] = {
            "records_per_day": rpd,
            "jobs": BATCH_JOBS,
            "first_run": _finished_json(first),
            "rerun": _finished_json(rerun),
            "job_data_files": sizes,
            "job_data_bytes": total,
            "bytes_on_disk_at_kill": held,
            "files_on_disk_at_kill": held_files,
            "rerun_requested_bytes": fetched,
            "bytes_downloaded_again": again,
            "largest_data_file": largest,
            "rerun_downloads": [
                request["params"] for request in later if request["endpoint"] == DOWNLOAD
            ],
            "submits_total": submits[0],
            "submits_in_rerun": new_submits,
            "files_equal_stream": {"equal": equal, "compared": compared, "problems": problems},
        }
        share = f"{held / total:.0%}" if total else "?"
        killed = "killed" if first.killed else f"NOT killed (exit {first.exit_code})"
        return [
            Row(
                f"9. {self._batch_label()}, --jobs {BATCH_JOBS}, {killed} at {share} of the "
                "job's bytes: downloaded again (again/largest file)",
                f"{again / 1e6:.2f} MB",
                f"{largest / 1e6:.2f} MB",
                again / largest if largest else None,
                "<= 1 file",
                first.killed and largest > 0 and again <= largest,
            ),
            Row(
                "9. new submit_job in the re-run",
                str(new_submits),
                f"{submits[0]} in all",
                None,
                "0",
                new_submits == 0,
            ),
            Row(
                f"9. re-run exit {rerun.exit_code}, file equal to stream's, decoded"
                f"{': ' + problems[0] if problems else ''}",
                "yes" if same else "no",
                f"{equal}/{compared} files",
                None,
                "exit 0, equal",
                same,
            ),
        ]

    def batch_memory(self) -> list[Row]:
        """Peak RSS of the batch run of scenario 8 (the stream run's for reference)."""
        batch, stream = self.engine_year("batch"), self.engine_year("stream")
        ratio = batch.run.peak_rss_mb / stream.run.peak_rss_mb
        return [
            Row(
                f"10. peak RSS, {self._batch_label()} (batch/stream)",
                _mb(batch.run),
                _mb(stream.run),
                ratio,
                f"<= {RSS_LIMIT_MB:.0f} MB",
                batch.run.peak_rss_mb <= RSS_LIMIT_MB,
            )
        ]

    # an S3 bucket as the data dir

    def _s3_label(self) -> str:
        rpd = self.records_per_day(1)
        return f"{self.volume(rpd)} year at {S3_THROTTLE_BYTES_PER_S / 1e6:.0f} MB/s/conn"

    def _fresh_s3(self) -> S3Server:
        """A new local S3 server process (the previous one stopped), kept until `close()`."""
        self.close()
        self._s3 = self._s3_stack.enter_context(
            s3_server(self._path("s3-server"), bucket=S3_BUCKET)
        )
        return self._s3

    def store_year(self, where: str) -> StoreRun:
        """Our CLI, default engine, `--force` into a fresh data dir: `where` "s3" (a fresh
        bucket on a fresh local S3 server, `--work-dir` a fresh folder) or "local"; each run on
        a fresh prebuilt sandbox at S3_THROTTLE_BYTES_PER_S per connection. Median of `repeat`
        runs; memoized. The S3 server of the last s3 run keeps serving (scenario 13)."""
        rpd = self.records_per_day(1)
        key = (where, rpd)
        if key in self._store:
            return self._store[key]
        runs: list[Measurement] = []
        data_dir, trades, work = "", "", None  # the last run's
        s3_requests: list[dict[str, Any]] = []
        uploads: list[float] = []
        completes: list[float] = []
        for _ in range(self.repeat):
            if data_dir:  # keep only the last run's output
                _remove(work if work is not None else Path(data_dir))
            s3 = self._fresh_s3() if where == "s3" else None
            with sandbox(
                self._path(f"{where}-server"),
                records_per_day=rpd,
                throttle_bytes_per_s=S3_THROTTLE_BYTES_PER_S,
                prebuilt=PREBUILT_YEAR,
            ) as gateway:
                if s3 is not None:
                    work = self._path("s3-work")
                    data_dir, trades = s3.url(S3_PREFIX), f"{S3_PREFIX}/{TRADES_KEY}"
                    argv, env = (
                        ours_argv(data_dir, force=True, work_dir=work),
                        s3.env(gateway.env()),
                    )
                else:
                    folder = self._path("local-data")
                    data_dir, trades = str(folder), folder / TRADES_KEY
                    argv, env = ours_argv(folder, force=True), gateway.env()
                started_ns = time.time_ns()
                runs.append(measure(argv, env=env, log=self.log))
            if s3 is not None:
                s3_requests = [r for r in s3.requests() if r["at_ns"] >= started_ns]
                upload_s, complete_s = _upload_timing(s3_requests)
                uploads.append(upload_s)
                completes.append(complete_s)
        result = StoreRun(
            median_of(runs),
            data_dir,
            trades,
            work,
            statistics.median(uploads) if uploads else 0.0,
            statistics.median(completes) if completes else 0.0,
        )
        self.measurements[f"store {where} records_per_day={rpd}"] = {
            "median": result.run.as_json(),
            "runs": [run.as_json() for run in runs],
            "throttle_bytes_per_s": S3_THROTTLE_BYTES_PER_S,
            "data_dir": data_dir,
            "output_bytes": trades.stat().st_size if isinstance(trades, Path) else None,
            "s3_requests": _request_counts(s3_requests) if where == "s3" else None,
            "upload_s": [round(x, 4) for x in uploads] if where == "s3" else None,
            "complete_multipart_upload_s": [round(x, 4) for x in completes]
            if where == "s3"
            else None,
            "work_dir_files_left": _files_below(work) if work is not None else None,
        }
        self._store[key] = result
        return result

    def s3_vs_local(self) -> list[Row]:
        """The year into a bucket against into a local folder: wall times, and whether the
        uploaded object is the local file byte for byte."""
        s3, local = self.store_year("s3"), self.store_year("local")
        assert self._s3 is not None
        assert isinstance(s3.trades, str)
        assert isinstance(local.trades, Path)
        same = self._s3.same_object(s3.trades, local.trades)
        self.measurements["store s3 object vs local file"] = same
        ratio = s3.run.wall_s / local.run.wall_s
        return [
            Row(
                f"11. {self._s3_label()}, wall (s3/local)",
                _s(s3.run),
                _s(local.run),
                ratio,
                f"<= {S3_WALL_TARGET:g}",
                ratio <= S3_WALL_TARGET,
            ),
            Row(
                f"11. wall excl. the S3 server's {s3.complete_s:.2f} s completing the upload"
                " (s3/local)",
                f"{s3.excluding_complete_s:.2f} s",
                _s(local.run),
                s3.excluding_complete_s / local.run.wall_s,
                "-",
                None,
            ),
            Row(
                "11. uploaded object equal to the local file, byte for byte",
                "yes" if same["equal"] else f"no (differs at byte {same['first_difference']})",
                f"{same['object_bytes'] / 1e6:.1f} MB / {same['file_bytes'] / 1e6:.1f} MB",
                None,
                "equal",
                same["equal"],
            ),
        ]

    def s3_memory(self) -> list[Row]:
        """Peak RSS of the s3 run of scenario 11 (the local run's for reference)."""
        s3, local = self.store_year("s3"), self.store_year("local")
        return [
            Row(
                f"12. peak RSS, {self._s3_label()} (s3/local)",
                _mb(s3.run),
                _mb(local.run),
                s3.run.peak_rss_mb / local.run.peak_rss_mb,
                f"<= {S3_RSS_LIMIT_MB:.0f} MB",
                s3.run.peak_rss_mb <= S3_RSS_LIMIT_MB,
            )
        ]

    def s3_cached_rerun(self) -> list[Row]:
        """Scenario 11's command again, without --force, for s3 and for local (as scenario 4:
        a warm-up, then `cached_runs` interleaved); and what the s3 re-runs asked the bucket."""
        s3, local = self.store_year("s3"), self.store_year("local")
        server = self._s3
        assert server is not None
        assert s3.work_dir is not None
        base = self._no_gateway_env()
        s3_cmd = ours_argv(s3.data_dir, force=False, work_dir=s3.work_dir)
        local_cmd = ours_argv(Path(local.data_dir), force=False)
        s3_env = server.env(base)
        started_ns = time.time_ns()
        s3_runs, local_runs = self._interleaved([(s3_cmd, s3_env), (local_cmd, base)])
        requests = [r for r in server.requests() if r["at_ns"] >= started_ns]
        runs = len(s3_runs) + 1  # and the warm-up
        bodies = [r["key"] for r in requests if r["reads_body"]]
        imported = imported_modules(s3_cmd, s3_env, ["databento", "boto3", "botocore"])
        s3_median, local_median = median_of(s3_runs), median_of(local_runs)
        self.measurements["store cached re-run"] = {
            "s3": [run.as_json() for run in s3_runs],
            "local": [run.as_json() for run in local_runs],
            "s3_runs_incl_warm_up": runs,
            "s3_requests": _request_counts(requests),
            "s3_object_body_gets": dict(Counter(bodies)),
            "s3_imports": imported,
        }
        ratio = s3_median.wall_s / local_median.wall_s
        only_manifests = len(bodies) == runs and all(
            key.endswith(f"/{MANIFEST_NAME}") for key in bodies
        )
        got = ", ".join(f"{Path(k).name} x{n}" for k, n in Counter(bodies).items()) or "none"
        note = f" (imports {', '.join(imported)}!)" if imported else ""
        return [
            Row(
                f"13. cached re-run s3 vs local (median of {self.cached_runs}){note}",
                _s(s3_median),
                _s(local_median),
                ratio,
                f"<= {S3_CACHED_TARGET:g}",
                ratio <= S3_CACHED_TARGET and not imported,
            ),
            Row(
                f"13. object-body GETs, {runs} s3 cached re-runs: {got}",
                f"{len(bodies) / runs:g} per run",
                f"{MANIFEST_NAME} only",
                None,
                f"1 ({MANIFEST_NAME})",
                only_manifests,
            ),
        ]


SCENARIOS = {
    1: Bench.year_vs_plain,
    2: Bench.throttled,
    3: Bench.flat_memory,
    4: Bench.cached_rerun,
    5: Bench.universe_vs_loop,
    6: Bench.universe_vs_singles,
    7: Bench.universe_memory,
    8: Bench.batch_vs_stream,
    9: Bench.batch_resume,
    10: Bench.batch_memory,
    11: Bench.s3_vs_local,
    12: Bench.s3_memory,
    13: Bench.s3_cached_rerun,
    14: Bench.flat_cost,
}


def _files_below(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _upload_timing(requests: list[dict[str, Any]]) -> tuple[float, float]:
    """Seconds from the first request of an upload (listing unfinished uploads, or a single
    PUT) to its CompleteMultipartUpload's arrival, and the server's time answering that."""
    completes = [r for r in requests if r["method"] == "POST" and "uploadId=" in r["query"]]
    if not completes:
        return 0.0, 0.0
    complete = completes[-1]
    first = next(
        (r for r in requests if r["method"] == "GET" and "uploads" in r["query"]), complete
    )
    done = complete["done_ns"] or complete["at_ns"]
    return (complete["at_ns"] - first["at_ns"]) / 1e9, (done - complete["at_ns"]) / 1e9


def _request_counts(requests: list[dict[str, Any]]) -> dict[str, int]:
    """S3 requests by kind: METHOD, and the query's parameter names (uploads, partNumber...)."""
    kinds = Counter(
        " ".join([r["method"], *sorted({p.partition("=")[0] for p in r["query"].split("&") if p})])
        + (" object" if r["key"] else " bucket")
        for r in requests
    )
    return dict(sorted(kinds.items()))


def job_wait_s(log: list[dict[str, Any]]) -> float:
    """From the (first) submit_job request to the first list_files after it, in seconds: the
    job's processing time and the poll that saw it done, not our download."""
    submitted = next(r["at_ns"] for r in log if r["endpoint"] == SUBMIT)
    listed = next(
        r["at_ns"] for r in log if r["endpoint"] == LIST_FILES and r["at_ns"] >= submitted
    )
    return (listed - submitted) / 1e9


def _job_data_sizes(state_dir: Path) -> dict[str, int]:
    """filename -> size of the data files of the sandbox's (only) batch job; {} until written."""
    jobs = sandbox_batch_jobs(state_dir)
    files = (jobs[0].get("files") if jobs else None) or []
    return {f["filename"]: f["size"] for f in files if f["data"]}


def _job_data_bytes(state_dir: Path) -> int | None:
    sizes = _job_data_sizes(state_dir)
    return sum(sizes.values()) if sizes else None


def _job_downloads(downloads: Path) -> list[Path]:
    """Our downloads of job files: .batch/JOB_ID/FILE or FILE.partial."""
    return [path for path in downloads.glob("*/*") if path.is_file()]


def _bytes_on_disk(downloads: Path) -> int:
    total = 0
    for path in _job_downloads(downloads):
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # renamed from .partial just now: counted under its new name
            continue
    return total


def _range_start(header: str | None) -> int:
    """N of a `bytes=N-[M]` Range header; 0 without one."""
    match = re.fullmatch(r"bytes=(\d+)-\d*", (header or "").strip())
    return int(match[1]) if match else 0


def _finished_json(run: Finished) -> dict[str, Any]:
    return {
        "exit_code": run.exit_code,
        "killed": run.killed,
        "wall_s": round(run.wall_s, 4),
        "peak_rss_mb": round(run.peak_rss_mb, 4),
    }


def _raw(data_dir: Path) -> Path:
    return data_dir / "raw" / "databento"


def imported_modules(argv: list[str], env: dict[str, str], modules: list[str]) -> list[str]:
    """Which of these top-level modules the command imports (from `python -X importtime`)."""
    traced = [PYTHON, "-X", "importtime", *argv[1:]]
    done = subprocess.run(traced, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return [
        name
        for name in modules
        if re.search(rf"\|\s+{re.escape(name)}(\.|$)", done.stderr, re.MULTILINE)
    ]


def _remove(target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)


def _output_bytes(target: Path | None) -> int | None:
    if target is None or not target.exists():
        return None
    if target.is_file():
        return target.stat().st_size
    return sum(path.stat().st_size for path in target.rglob("*.dbn.zst"))


def _manifest_records(data_dir: Path | None) -> int | None:
    manifests = list(data_dir.rglob("manifest.json")) if data_dir else []
    if not manifests:
        return None
    return json.loads(manifests[0].read_text())["products"]["TRADES"]["records"]


def _dbn_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(SYMBOL/YEAR/PRODUCT.dbn.zst, path) below `root`, sorted."""
    for path in sorted(root.rglob("*.dbn.zst")):
        yield path.relative_to(root).as_posix(), path


COMPARE_BLOCK = 4 * 2**20


def _decoded_blocks(path: Path) -> Iterator[bytes]:
    """The decompressed bytes (zstd, across frames) in blocks of COMPARE_BLOCK, the last
    shorter: streamed, so the bench's own RSS stays small (see bench.harness)."""
    with path.open("rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        block = b""
        while piece := reader.read(COMPARE_BLOCK - len(block)):
            block += piece
            if len(block) == COMPARE_BLOCK:
                yield block
                block = b""
        if block:
            yield block


def same_decoded(ours: Path, theirs: Path) -> bool:
    """Whether both files decompress to the same bytes."""
    pairs = itertools.zip_longest(_decoded_blocks(ours), _decoded_blocks(theirs))
    return all(a == b for a, b in pairs)  # a missing block is None: unequal


def compare_files(ours: Path, theirs: Path) -> tuple[int, int, list[str]]:
    """How many of `theirs` files decode (zstd, across frames) to the bytes of ours, of how
    many; and what is missing or extra on our side."""
    our_files, their_files = dict(_dbn_files(ours)), dict(_dbn_files(theirs))
    problems = [f"missing {name}" for name in sorted(their_files.keys() - our_files.keys())]
    problems += [f"extra {name}" for name in sorted(our_files.keys() - their_files.keys())]
    equal = 0
    for name, path in their_files.items():
        if name not in our_files:
            continue
        if same_decoded(our_files[name], path):
            equal += 1
        else:
            problems.append(f"differs {name}")
    return equal, len(their_files), problems
