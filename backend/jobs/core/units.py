"""Pure: which engine fetches a group (streaming requests or one batch job), and the units the
batch flags are written in."""

from __future__ import annotations

import math
import re
from typing import Literal

from backend.jobs.core.ranges import Chunking
from backend.jobs.errors import InvalidInputError

Engine = Literal["auto", "stream", "batch"]
ENGINES: tuple[Engine, ...] = ("auto", "stream", "batch")
# Databento's guidance: stream below about 5 GB per request, batch above.
DEFAULT_BATCH_ABOVE = "5GB"
DEFAULT_BATCH_TIMEOUT = "6h"

SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# --batch-timeout: at least a second; at most 30 days, when Databento expires a job's files.
MIN_WAIT_S, MAX_WAIT_S = 1.0, 30 * 86400.0
SHOWN_UNITS = (("KB", 10**3), ("MB", 10**6), ("GB", 10**9), ("TB", 10**12))


def parse_size(text: str, flag: str = "--batch-above") -> int:
    """`5GB`, `800MB`, `1.5GiB` or a number of bytes -> bytes (GB is 10^9, as Databento bills)."""
    match = SIZE.match(text)
    unit = match[2].upper() if match else ""
    if match is None or unit not in SIZE_UNITS:
        raise InvalidInputError(
            f"{flag} {text!r} is not a size: write a number and a unit, e.g. 5GB, 800MB or 2GiB "
            "(B, KB, MB, GB, TB: powers of 1000; KiB, MiB, GiB, TiB: powers of 1024)"
        )
    return int(float(match[1]) * SIZE_UNITS[unit])


def parse_duration(text: str, flag: str = "--batch-timeout") -> float:
    """`1d`, `6h`, `90m`, `1h30m`, `45s` or a number of seconds -> seconds, from 1 s to 30 days.

    Plain digits only (no `inf`, `nan` or exponents), each unit at most once, largest first.
    """
    compact = text.strip().lower().replace(" ", "")
    parts = DURATION_PART.findall(compact)
    units = [unit for _, unit in parts]
    if re.fullmatch(r"\d+(?:\.\d+)?", compact):
        seconds = float(compact)
    elif (
        parts
        and "".join(number + unit for number, unit in parts) == compact
        and units == sorted(set(units), key="dhms".index)
    ):
        seconds = sum(float(number) * SECONDS[unit] for number, unit in parts)
    else:
        seconds = math.nan
    if not MIN_WAIT_S <= seconds <= MAX_WAIT_S:
        raise InvalidInputError(
            f"{flag} {text!r} is not a duration from 1s to 30d: write a number with d, h, m or s "
            "(e.g. 90m, 6h, 1h30m, 1d) or a number of seconds"
        )
    return seconds


def parse_engine(text: str, source: str = "--engine") -> Engine:
    value = text.strip().lower()
    for engine in ENGINES:
        if value == engine:
            return engine
    raise InvalidInputError(f"{source} {text!r} is not an engine: use auto, stream or batch")


def usd(value: float) -> str:
    """Cents for real amounts; sub-cent estimates keep their digits so they never read $0.00."""
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.2g}"


def human_bytes(count: int, digits: int = 3) -> str:
    """`2.5 MB`, `800 MB`, `1.23 GB`, `1 B`: decimal units as Databento bills, `digits`
    significant digits (never rounded to zero)."""
    fitting = [index for index, (_, size) in enumerate(SHOWN_UNITS) if count >= size]
    if not fitting:
        return f"{count:,} B"
    index = fitting[-1]
    value = count / SHOWN_UNITS[index][1]
    if round(value, max(0, digits - len(str(int(value))))) >= 1000 and index + 1 < len(SHOWN_UNITS):
        index += 1  # 999,999 B reads 1 MB, not 1,000 KB
        value = count / SHOWN_UNITS[index][1]
    text = f"{value:,.{max(0, digits - len(str(int(value))))}f}"
    return f"{text.rstrip('0').rstrip('.') if '.' in text else text} {SHOWN_UNITS[index][0]}"


def shown_sizes(first: int, second: int) -> tuple[str, str]:
    """Two sizes to compare on screen: precise enough that unequal sizes never read equal."""
    for digits in (3, 6, 9):
        shown = human_bytes(first, digits), human_bytes(second, digits)
        if first == second or shown[0] != shown[1]:
            return shown
    return f"{first:,} B", f"{second:,} B"


def split_duration(chunking: Chunking) -> str:
    """A batch job's files follow --chunk: a file is the unit a job is checked and resumed in.

    `auto` (sized requests) has no calendar unit: a month keeps a liquid symbol's files
    around a gigabyte or less.
    """
    return chunking if chunking in ("day", "week", "month") else "month"
