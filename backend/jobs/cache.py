"""The cache layout on disk, and the temporary files that must never outlive a run.

    {data_dir}/raw/databento/{SYMBOL}/{YEAR}/TRADES.dbn.zst      final, verified DBN stream
    {data_dir}/raw/databento/{SYMBOL}/{YEAR}/manifest.json       what each final file holds
    {data_dir}/raw/databento/{SYMBOL}/{YEAR}/.parts/TRADES/      finished chunks until the merge
    {data_dir}/raw/databento/{SYMBOL}/{YEAR}/.TRADES.lock        one writer per symbol-year-product

The symbol folder is the symbol with every byte outside `A-Z a-z 0-9 . _ -` (and a leading
dot) percent-encoded, so `BRK.B` stays `BRK.B` and `AAPL  250221C00250000` becomes
`AAPL%20%20250221C00250000`; `urllib.parse.unquote` gives the symbol back.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

RAW_SUBDIR = Path("raw") / "databento"
TEMP_SUFFIX = ".tmp"


def symbol_folder(symbol: str) -> str:
    name = quote(symbol, safe="._-")
    return "%2E" + name[1:] if name.startswith(".") else name


def folder_symbol(folder: str) -> str:
    return unquote(folder)


@dataclass(frozen=True)
class YearFolder:
    """Where one symbol-year lives."""

    data_dir: Path
    symbol: str
    year: int

    @property
    def path(self) -> Path:
        return self.data_dir / RAW_SUBDIR / symbol_folder(self.symbol) / str(self.year)

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    def final(self, product: str) -> Path:
        return self.path / f"{product}.dbn.zst"

    def parts(self, product: str) -> Path:
        return self.path / ".parts" / product

    def lock(self, product: str) -> Path:
        return self.path / f".{product}.lock"


def temp_path_for(final: Path) -> Path:
    """A unique name beside `final`, so `os.replace` onto it is atomic (same filesystem)."""
    return final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


def remove_stale_temps(folder: Path, stem: str) -> int:
    """Delete temp files a killed run left for `stem`; only call while holding its lock."""
    removed = 0
    if folder.is_dir():
        for leftover in folder.glob(f".{stem}*{TEMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temp: Path, final: Path) -> None:
    """Make a fully written temp file visible under its final name, durably."""
    with temp.open("rb+") as handle:
        os.fsync(handle.fileno())
    temp.replace(final)
    fsync_dir(final.parent)


class ScratchFiles:
    """Temp paths handed out during a run; whatever is still registered at the end is deleted."""

    def __init__(self) -> None:
        self._paths: set[Path] = set()
        self._lock = threading.Lock()

    def new(self, final: Path) -> Path:
        path = temp_path_for(final)
        with self._lock:
            self._paths.add(path)
        return path

    def forget(self, path: Path) -> None:
        with self._lock:
            self._paths.discard(path)

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.forget(path)

    def remove_all(self) -> None:
        with self._lock:
            paths, self._paths = self._paths, set()
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
