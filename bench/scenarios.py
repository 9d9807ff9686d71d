"""The four comparisons; each measured command runs in its own process against a fresh sandbox."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    PYTHON,
    REPO,
    Gateway,
    Measurement,
    import_argv,
    measure,
    median_of,
    ours_argv,
    plain_argv,
    sandbox,
)

PREBUILT_YEAR = "XNAS.ITCH/AAPL/trades/2023"
RECORDS_PER_GIB = 86_000  # 48-byte trades x 260 weekdays of 2023 ~= 1 GiB uncompressed
THROTTLE_BYTES_PER_S = 20_000_000  # per connection, on the compressed body
QUICK_DIVISOR = 16
RSS_LIMIT_MB = 200.0


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


class Bench:
    """Runs scenarios, sharing the downloads they have in common (memoized by volume)."""

    def __init__(self, work: Path, log: Path, *, quick: bool, repeat: int, cached_runs: int):
        self.work, self.log = work, log
        self.quick, self.repeat, self.cached_runs = quick, repeat, cached_runs
        self.measurements: dict[str, Any] = {}
        self._ours: dict[int, tuple[Measurement, Path]] = {}
        self._ids = itertools.count(1)

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

    def cached_rerun(self) -> list[Row]:
        _, data_dir = self.ours(self.records_per_day(1))
        # No gateway listens there: a request would fail the run instead of going unnoticed.
        env = Gateway("127.0.0.1:9", self.work / "no-ca.pem").env()
        ours_cmd, import_cmd = ours_argv(data_dir, force=False), import_argv()
        for argv in (ours_cmd, import_cmd):  # warm-up: bytecode and file caches
            measure(argv, env=env, log=self.log)
        ours_runs, import_runs = [], []
        for _ in range(self.cached_runs):  # interleaved, so drifting load hits both alike
            ours_runs.append(measure(ours_cmd, env=env, log=self.log))
            import_runs.append(measure(import_cmd, env=env, log=self.log))
        ours, baseline = median_of(ours_runs), median_of(import_runs)
        self.measurements["cached re-run"] = {
            "ours": [run.as_json() for run in ours_runs],
            "import typer, loguru": [run.as_json() for run in import_runs],
        }
        imported = imports_databento(ours_cmd, env)
        self.measurements["cached re-run imports databento"] = imported
        ratio = ours.wall_s / baseline.wall_s
        name = f"4. cached re-run vs import typer+loguru (median of {self.cached_runs})"
        note = " (imports databento!)" if imported else ""
        return [
            Row(name + note, _s(ours), _s(baseline), ratio, "<= 2", ratio <= 2 and not imported)
        ]


SCENARIOS = {
    1: Bench.year_vs_plain,
    2: Bench.throttled,
    3: Bench.flat_memory,
    4: Bench.cached_rerun,
}


def imports_databento(argv: list[str], env: dict[str, str]) -> bool:
    """Whether the command imports `databento` (from `python -X importtime`)."""
    traced = [PYTHON, "-X", "importtime", *argv[1:]]
    done = subprocess.run(traced, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return re.search(r"\|\s+databento(\.|$)", done.stderr, re.MULTILINE) is not None


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
