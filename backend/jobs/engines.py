"""Pure: which engine fetches a group (streaming requests or one batch job), and the units the
batch flags are written in."""

from __future__ import annotations

import re
from typing import Literal

from backend.jobs.errors import InvalidInputError
from backend.jobs.plan import Chunking

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
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")
SECONDS = {"h": 3600, "m": 60, "s": 1}


def parse_size(text: str, flag: str = "--batch-above") -> int:
    """`5GB`, `800MB`, `1.5GiB` or a number of bytes -> bytes (GB is 10^9, as Databento bills)."""
    match = SIZE.match(text)
    unit = match[2].upper() if match else ""
    if match is None or unit not in SIZE_UNITS:
        raise InvalidInputError(
            f"{flag} {text!r} is not a size: write a number and a unit, e.g. 5GB, 800MB or 2GiB"
        )
    return int(float(match[1]) * SIZE_UNITS[unit])


def parse_duration(text: str, flag: str = "--batch-timeout") -> float:
    """`6h`, `90m`, `1h30m`, `45s` or a number of seconds -> seconds (> 0)."""
    compact = text.strip().lower().replace(" ", "")
    try:
        seconds = float(compact)
    except ValueError:
        parts = DURATION_PART.findall(compact)
        if not parts or "".join(number + unit for number, unit in parts) != compact:
            seconds = -1.0
        else:
            seconds = sum(float(number) * SECONDS[unit] for number, unit in parts)
    if not seconds > 0:
        raise InvalidInputError(
            f"{flag} {text!r} is not a duration: write e.g. 6h, 90m, 1h30m or 3600 (seconds)"
        )
    return seconds


def parse_engine(text: str, source: str = "--engine") -> Engine:
    value = text.strip().lower()
    for engine in ENGINES:
        if value == engine:
            return engine
    raise InvalidInputError(f"{source} {text!r} is not an engine: use auto, stream or batch")


def choose_engine(engine: Engine, estimated_bytes: int, batch_above: int) -> tuple[str, str]:
    """(engine, why) for one group of symbol-year-products from its preflight estimate."""
    if engine == "stream":
        return "stream", "--engine stream"
    if engine == "batch":
        return "batch", "--engine batch"
    size = f"{estimated_bytes / 1e9:,.2f} GB"
    limit = f"{batch_above / 1e9:,.2f} GB"
    if estimated_bytes > batch_above:
        return "batch", f"estimate {size} > --batch-above {limit}"
    return "stream", f"estimate {size} <= --batch-above {limit}"


def split_duration(chunking: Chunking) -> str:
    """A batch job's files follow --chunk: a file is the unit a job is checked and resumed in.

    `auto` (sized requests) has no calendar unit: a month keeps a liquid symbol's files
    around a gigabyte or less.
    """
    return chunking if chunking in ("day", "week", "month") else "month"
