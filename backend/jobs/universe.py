"""Pure: which symbols and years a run covers, from --symbol(s), --symbols-file and --year(s)."""

from __future__ import annotations

from pathlib import Path

from backend.jobs.errors import InvalidInputError
from backend.jobs.plan import normalize_symbol, validate_year

MAX_YEARS = 100


def parse_year(text: str) -> int:
    """A year written in ASCII digits, in range."""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise InvalidInputError(
            f"year {text!r} is not a number: pass a four-digit year such as 2023"
        )
    return validate_year(int(digits))


def parse_years(text: str) -> list[int]:
    """`2021-2023`, `2021,2023` or both (`2019,2021-2023`), in the order given, no repeats."""
    years: list[int] = []
    for item in text.split(","):
        if not item.strip():
            continue
        first, dash, last = item.partition("-")
        span = [parse_year(first)] if not dash else _year_range(first, last, text)
        years += [year for year in span if year not in years]
    if not years:
        raise InvalidInputError(f"--years {text!r} names no year: pass e.g. 2021-2023 or 2021,2023")
    if len(years) > MAX_YEARS:
        raise InvalidInputError(f"--years {text!r} names more than {MAX_YEARS} years")
    return years


def _year_range(first: str, last: str, text: str) -> list[int]:
    start, end = parse_year(first), parse_year(last)
    if start > end:
        raise InvalidInputError(
            f"--years {text!r}: a range goes from the earlier year to the later"
        )
    return list(range(start, end + 1))


def parse_symbols(text: str) -> list[str]:
    """`AAPL,MSFT,...`: each normalised like --symbol; blanks ignored."""
    return [normalize_symbol(item) for item in text.split(",") if item.strip()]


def read_symbols_file(path: Path) -> list[str]:
    """One symbol per line; blank lines and `#` comments (whole or trailing) ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"--symbols-file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"--symbols-file {path} cannot be read as text: {exc}") from None
    symbols = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if content:
            try:
                symbols.append(normalize_symbol(content))
            except InvalidInputError as exc:
                raise InvalidInputError(f"{path}:{number}: {exc}") from None
    return symbols


def universe(
    *,
    symbol: str | None,
    symbols: str | None,
    symbols_file: str | None,
    year: str | None,
    years: str | None,
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The symbols and years of a run (their cross product), duplicates dropped, order kept."""
    names: list[str] = []
    if symbol is not None:
        names.append(normalize_symbol(symbol))
    if symbols is not None:
        names += parse_symbols(symbols)
    if symbols_file:
        names += read_symbols_file(Path(symbols_file).expanduser())
    if not names:
        raise InvalidInputError(
            "no symbol given: pass --symbol AAPL, --symbols AAPL,MSFT or --symbols-file PATH"
        )
    calendar: list[int] = []
    if year is not None:
        calendar.append(parse_year(year))
    if years is not None:
        calendar += parse_years(years)
    if not calendar:
        raise InvalidInputError("no year given: pass --year 2023 or --years 2021-2023")
    return tuple(dict.fromkeys(names)), tuple(dict.fromkeys(calendar))
