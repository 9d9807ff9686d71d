"""Nanosecond UTC timestamps as the Databento API reads and writes them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_SECOND
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = _EPOCH.toordinal()

_ISO_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[T ](?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,9}))?)?)?"
    r"(?P<offset>Z|[+-]\d{2}(?::?\d{2})?)?$",
)


@dataclass(frozen=True)
class ParsedTime:
    """A parsed timestamp and the resolution it was written with (used to forward-fill `end`)."""

    ns: int
    resolution_ns: int


def parse_timestamp(text: str) -> ParsedTime:
    """Parse ISO-8601 (any resolution, optional offset, naive = UTC) or integer nanoseconds."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return ParsedTime(int(text), 1)
    match = _ISO_RE.match(text)
    if match is None:
        raise ValueError(f"invalid datetime {text!r}")
    day = date.fromisoformat(match["date"])
    ns = date_to_ns(day)
    resolution = NS_PER_DAY
    if match["hour"] is not None:
        hour, minute = int(match["hour"]), int(match["minute"])
        if hour > 23 or minute > 59:
            raise ValueError(f"invalid time in {text!r}")
        ns += (hour * 3600 + minute * 60) * NS_PER_SECOND
        resolution = 60 * NS_PER_SECOND
        if match["second"] is not None:
            second = int(match["second"])
            if second > 59:
                raise ValueError(f"invalid time in {text!r}")
            ns += second * NS_PER_SECOND
            resolution = NS_PER_SECOND
            if match["fraction"] is not None:
                digits = match["fraction"]
                ns += int(digits.ljust(9, "0"))
                resolution = 10 ** (9 - len(digits))
    offset = match["offset"]
    if offset and offset != "Z":
        sign = -1 if offset[0] == "-" else 1
        hours, minutes = int(offset[1:3]), int(offset[-2:]) if len(offset) > 3 else 0
        ns -= sign * (hours * 3600 + minutes * 60) * NS_PER_SECOND
    return ParsedTime(ns, resolution)


def date_to_ns(day: date) -> int:
    return (day.toordinal() - _EPOCH_ORDINAL) * NS_PER_DAY


def to_ns(moment: datetime | date | str | int) -> int:
    """UTC nanoseconds of a datetime (naive = UTC), a date's midnight, an ISO string or ns."""
    if isinstance(moment, int):
        return moment
    if isinstance(moment, str):
        return parse_timestamp(moment).ns
    if not isinstance(moment, datetime):
        return date_to_ns(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * NS_PER_SECOND + delta.microseconds * 1000


def ns_to_date(ns: int) -> date:
    """The UTC date containing `ns`."""
    return date.fromordinal(_EPOCH_ORDINAL + ns // NS_PER_DAY)


def ceil_date(ns: int) -> date:
    """The first UTC midnight at or after `ns`, as a date (exclusive end date of a range)."""
    day = ns_to_date(ns)
    return day if ns % NS_PER_DAY == 0 else day + timedelta(days=1)


def today_midnight_ns() -> int:
    return date_to_ns(datetime.now(UTC).date())


def format_iso_ns(ns: int) -> str:
    """`2024-01-02T14:30:00.000000000Z`, the form the API uses in JSON."""
    seconds, fraction = divmod(ns, NS_PER_SECOND)
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


def format_human_ns(ns: int) -> str:
    """`2024-01-02 14:30:00+00:00` (pandas style), the form the API uses in error messages."""
    seconds, fraction = divmod(ns, NS_PER_SECOND)
    moment = datetime.fromtimestamp(seconds, UTC)
    if fraction == 0:
        frac_text = ""
    elif fraction % 1000 == 0:
        frac_text = f".{fraction // 1000:06d}"
    else:
        frac_text = f".{fraction:09d}"
    return f"{moment:%Y-%m-%d %H:%M:%S}{frac_text}+00:00"
