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


def decompressed(path: Path) -> bytes:
    """A DBN file's content, across all its zstd frames."""
    import zstandard

    with path.open("rb") as handle:
        return zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True).read()


def plain_get_range(
    gateway,
    symbols: list[str],
    path: Path,
    *,
    schema: str = "trades",
    start: str = "2023-01-01T00:00:00Z",
    end: str = "2024-01-01T00:00:00Z",
) -> Path:
    """What a user gets from one plain SDK get_range (the whole of 2023 unless told)."""
    import os

    import databento

    client = databento.Historical(key=os.environ["DATABENTO_API_KEY"], gateway=gateway.gateway)
    store = client.timeseries.get_range(
        dataset="XNAS.ITCH",
        symbols=symbols,
        schema=schema,
        stype_in="raw_symbol",
        stype_out="instrument_id",
        start=start,
        end=end,
        path=path,
    )
    store.reader.close()
    return path


def add_tricky_symbols(gateway) -> None:
    """Ids that swap between two symbols mid-2023, and an id reused after a delisting."""
    from datetime import date

    listed, delisted = date(2000, 1, 1), date(2100, 1, 1)
    swap = date(2023, 6, 15)
    gateway.add_symbol("SWAPA", [(listed, swap, 801), (swap, delisted, 802)])
    gateway.add_symbol("SWAPB", [(listed, swap, 802), (swap, delisted, 801)])
    gateway.add_symbol("OLDCO", [(listed, date(2023, 6, 1), 900)])
    gateway.add_symbol("REUSE", [(date(2023, 6, 1), delisted, 900)])
