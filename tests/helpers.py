"""Small helpers shared by the integration tests."""

from __future__ import annotations

import re
from pathlib import Path

# Real Databento samples (databento-python's test data, Apache-2.0), copied from shared/fixtures.
FIXTURES = Path(__file__).resolve().parent / "data" / "databento" / "XNAS.ITCH"
COMPLETION = re.compile(
    r"symbol=(?P<symbol>\S+) year=(?P<year>\d+) product=(?P<product>\w+) "
    r"status=(?P<status>downloaded|skipped) bytes=(?P<bytes>\d+) elapsed_s=(?P<elapsed>[\d.]+)"
)
YEAR_2023 = (1672531200 * 10**9, 1704067200 * 10**9)


def completions(output: str) -> list[dict[str, str]]:
    return [match.groupdict() for match in COMPLETION.finditer(output)]


def year_folder(data_dir: Path, symbol: str = "AAPL", year: int = 2023) -> Path:
    return data_dir / "raw" / "databento" / symbol / str(year)


def leftovers(data_dir: Path) -> list[Path]:
    return [path for path in data_dir.rglob("*") if path.name.endswith(".tmp")]


def written_files(data_dir: Path) -> list[Path]:
    """Every file a run left under `data_dir`, except the empty lock files of `.locks/`."""
    locks = data_dir / "raw" / "databento" / ".locks"
    return [p for p in data_dir.rglob("*") if p.is_file() and locks not in p.parents]
