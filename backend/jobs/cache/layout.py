"""The cache layout: store keys of each dataset-symbol-year, and its local working folders.

    {data_dir}/raw/databento/{SYMBOL}/{YEAR}/TRADES.dbn.zst       XNAS.ITCH (the default dataset)
    {data_dir}/raw/databento/{SYMBOL}/{YEAR}/manifest.json        what each final file holds
    {data_dir}/raw/databento/datasets/{DATASET}/{SYMBOL}/{YEAR}/  any other dataset, same layout
    .../{YEAR}/.parts/TRADES/                                     finished chunks until the merge
    .../{YEAR}/.parts/TRADES/batch-job.json                       its batch job, until published
    {data_dir}/raw/databento/.locks/.../{YEAR}/TRADES.lock        one writer per product

Final files, manifests, job records and locks are store keys (`SymbolYear`); parts and files
being written are local, below the run's working root: the data dir itself, or the work dir
of a bucket (`YearFolder`).

The symbol folder is the symbol with every byte outside `A-Z a-z 0-9 . _ -` (and a leading
dot) percent-encoded, so `BRK.B` stays `BRK.B` and `AAPL  250221C00250000` becomes
`AAPL%20%20250221C00250000`; `urllib.parse.unquote` gives the symbol back. Symbols are upper
case, so the lower-case `datasets` folder can never be a symbol's.

Working folders (`.parts/...`, `.locks/...`) are created by the tool and must be real folders:
one found to be a symbolic link is refused, so nothing is written or deleted outside the data
dir. The data dir itself, `raw` and `raw/databento` may be links to another disk.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from backend.jobs.core.files import make_working_dir

if TYPE_CHECKING:
    from backend.jobs.store.base import Store

RAW_SUBDIR = Path("raw") / "databento"
DEFAULT_DATASET = "XNAS.ITCH"
DATASETS_SUBDIR = "datasets"
LOCKS_SUBDIR = ".locks"
PARTS_SUBDIR = ".parts"
FINAL_SUFFIX = ".dbn.zst"
MANIFEST_FILE = "manifest.json"
JOB_RECORD_FILE = "batch-job.json"


def symbol_folder(symbol: str) -> str:
    name = quote(symbol, safe="._-")
    return "%2E" + name[1:] if name.startswith(".") else name


def folder_symbol(folder: str) -> str:
    return unquote(folder)


def dataset_subdir(dataset: str) -> Path:
    """Where a dataset's symbol folders live, below raw/databento."""
    return Path() if dataset == DEFAULT_DATASET else Path(DATASETS_SUBDIR, dataset)


@dataclass(frozen=True)
class SymbolYear:
    """One dataset-symbol-year of the layout, as store keys (POSIX paths below the data dir)."""

    symbol: str
    year: int
    dataset: str = DEFAULT_DATASET

    @functools.cached_property
    def relative(self) -> Path:
        """The folder below raw/databento: also names its locks."""
        return dataset_subdir(self.dataset) / symbol_folder(self.symbol) / str(self.year)

    @functools.cached_property
    def _prefix(self) -> str:
        return (RAW_SUBDIR / self.relative).as_posix()

    def key(self, name: str) -> str:
        """A file of this folder as a store key."""
        return f"{self._prefix}/{name}"

    def final_key(self, product: str) -> str:
        return self.key(f"{product}{FINAL_SUFFIX}")

    @property
    def manifest_key(self) -> str:
        return self.key(MANIFEST_FILE)

    def job_key(self, product: str) -> str:
        """The batch job recorded for a product (cache/jobrecord.py), beside its parts."""
        return self.key(f"{PARTS_SUBDIR}/{product}/{JOB_RECORD_FILE}")

    def lock_key(self, product: str) -> str:
        return (RAW_SUBDIR / LOCKS_SUBDIR / self.relative / f"{product}.lock").as_posix()


@dataclass(frozen=True, kw_only=True)
class YearFolder(SymbolYear):
    """A dataset-symbol-year as a run uses it: its objects in `store` (final files, manifest,
    job records, locks), and its local working folder below `work_root` (parts, and each merged
    file until the store publishes it).

    `work_root` is the data dir itself for a local cache (a merged file is renamed into place),
    or the work dir of a bucket's run (it is uploaded from there).
    """

    store: Store = field(compare=False, repr=False)
    work_root: Path

    @functools.cached_property
    def path(self) -> Path:
        """This folder's local working copy: below `work_root`, as its keys are in the store."""
        return self.work_root / RAW_SUBDIR / self.relative

    def final(self, product: str) -> Path:
        """Where a product's merged file is written locally before it is published."""
        return self.path / f"{product}{FINAL_SUFFIX}"

    def parts(self, product: str) -> Path:
        return self.path / PARTS_SUBDIR / product

    def drop_parts(self, product: str) -> None:
        """Remove a product's parts once its final file is published (never through a link)."""
        parts = self.parts(product)
        if parts.is_dir() and not parts.is_symlink():
            shutil.rmtree(parts, ignore_errors=True)
            with contextlib.suppress(OSError):
                parts.parent.rmdir()

    def make_parts(self, product: str) -> Path:
        """The product's parts folder, created as real folders (never through a link)."""
        return make_working_dir(self.path, Path(PARTS_SUBDIR) / product)
