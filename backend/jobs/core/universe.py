"""Pure but for reading a symbols file: which symbols and years a run covers, from --symbol(s),
--symbols-file and --year(s). Every refusal is one line naming the flag (exit 2)."""

from __future__ import annotations

import codecs
import sys
from pathlib import Path

from backend.jobs.core.ranges import MAX_YEAR, MIN_YEAR, counted, normalize_symbol
from backend.jobs.errors import InvalidInputError

MAX_YEARS = 100
# A symbols file is read up to this size and no further (`--symbols-file /dev/zero` ends at
# once): an index's constituents are a few thousand tickers, a whole venue's listing fits.
MAX_SYMBOLS_FILE_BYTES = 1_000_000
MAX_SYMBOLS = 100_000
STDIN = "-"
YEAR_FORMS = "write 2023, a range 2021-2023, a list 2021,2023 or both: 2019,2021-2023"
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # PowerShell 5's `>` and Out-File


def parse_year(text: str, flag: str = "--year") -> int:
    """A year written in ASCII digits, in range."""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise InvalidInputError(
            f"{flag} {text!r} is not a number: pass a four-digit year such as 2023"
        )
    return _in_range(int(digits), f"{flag} {text!r}")


def _in_range(year: int, where: str) -> int:
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise InvalidInputError(
            f"{where}: year {year} is out of range: use a year from {MIN_YEAR} to {MAX_YEAR}"
        )
    return year


def parse_years(text: str, flag: str = "--years") -> list[int]:
    """`2021-2023`, `2021,2023` or both (`2019,2021-2023`), in the order given, no repeats."""
    where = f"{flag} {text!r}"
    years: dict[int, None] = {}
    for item in text.split(","):
        if item.strip():
            years.update(dict.fromkeys(_years_item(item.strip(), where)))
        if len(years) > MAX_YEARS:
            raise InvalidInputError(
                f"{where} names more than {MAX_YEARS} years: split the run into several"
            )
    if not years:
        raise InvalidInputError(f"{where} names no year: {YEAR_FORMS}")
    return list(years)


def _years_item(item: str, where: str) -> list[int]:
    """One comma-separated item of --years: `2023` or `2021-2023`."""
    first, dash, last = (part.strip() for part in item.partition("-"))
    if dash and (not first or not last or "-" in last):
        problem = (
            "has no first year" if not first else "has no last year" if not last else "has two '-'"
        )
        raise InvalidInputError(f"{where}: the range {item!r} {problem}: {YEAR_FORMS}")
    for part in (first, last) if dash else (first,):
        if not (part.isascii() and part.isdigit()):
            raise InvalidInputError(f"{where}: {part!r} is not a number: {YEAR_FORMS}")
    start = _in_range(int(first), where)
    end = _in_range(int(last), where) if dash else start
    if start > end:
        raise InvalidInputError(
            f"{where}: a range goes from the earlier year to the later: write {end}-{start}"
        )
    return list(range(start, min(end, start + MAX_YEARS) + 1))  # more is refused anyway


def symbol_option(raw: str, where: str) -> str:
    """A ticker as normalize_symbol has it, its refusal naming where it was given."""
    try:
        return normalize_symbol(raw)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None


def parse_symbols(text: str, flag: str = "--symbols") -> list[str]:
    """`AAPL,MSFT,...`: each normalised like --symbol; blanks ignored, but not all of them."""
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise InvalidInputError(f"{flag} {text!r} names no symbol: pass e.g. {flag} AAPL,MSFT")
    return [
        symbol_option(item, f"{flag} item {number}") for number, item in enumerate(items, start=1)
    ]


def read_symbols_file(name: str) -> list[str]:
    """One symbol per line; blank lines and `#` comments (whole or trailing) ignored.

    `-` is standard input. UTF-8 with or without a BOM (as Excel and PowerShell 7 write it), or
    UTF-16 with its BOM (PowerShell 5). At most MAX_SYMBOLS_FILE_BYTES are read: past that, or
    past MAX_SYMBOLS symbols, the file is refused. Refused too when it holds no symbol at all:
    a list that names nothing is a wrong file, not a request for nothing.
    """
    flag = "--symbols-file - (standard input)" if name == STDIN else f"--symbols-file {name}"
    data = _read_capped(name, flag)
    if len(data) > MAX_SYMBOLS_FILE_BYTES:
        raise InvalidInputError(
            f"{flag} is larger than {MAX_SYMBOLS_FILE_BYTES / 1e6:g} MB: a symbols file holds "
            f"at most {MAX_SYMBOLS:,} tickers, one per line; split it into several runs"
        )
    text = _decoded(data, flag)
    symbols: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        if len(symbols) == MAX_SYMBOLS:
            raise InvalidInputError(
                f"{flag} holds more than {MAX_SYMBOLS:,} symbols: split it into several runs"
            )
        if "," in content:
            raise InvalidInputError(
                f"{flag} line {number} holds a comma: put one ticker per line (not CSV)"
            )
        symbols.append(symbol_option(content, f"{flag} line {number}"))
    if not symbols:
        what = "is empty" if not text else "holds no symbol (only blank lines and # comments)"
        raise InvalidInputError(f"{flag} {what}: put one ticker per line, e.g. AAPL")
    return symbols


def _read_capped(name: str, flag: str) -> bytes:
    """At most one byte more than the cap: enough to know the file is too large."""
    try:
        if name == STDIN:
            if sys.stdin is None:
                raise InvalidInputError(f"{flag}: there is no standard input to read")
            return sys.stdin.buffer.read(MAX_SYMBOLS_FILE_BYTES + 1)
        with Path(name).expanduser().open("rb") as handle:
            return handle.read(MAX_SYMBOLS_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InvalidInputError(f"{flag} does not exist: check the path") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{flag} is a folder: pass a file of tickers") from None
    except OSError as exc:
        raise InvalidInputError(f"{flag} cannot be read: {exc.strerror or exc}") from None


def _decoded(data: bytes, flag: str) -> str:
    if data.startswith(UTF16_BOMS):
        encoding = "utf-16"
    elif b"\0" in data:
        raise InvalidInputError(
            f"{flag} is not a text file (it holds NUL bytes; UTF-16 without a BOM?): "
            "save it as UTF-8 text, one ticker per line"
        )
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{flag} is not UTF-8 text (byte {exc.start + 1} cannot be read): save it as UTF-8 "
            "text, one ticker per line"
        ) from None


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
        names.append(symbol_option(symbol, "--symbol"))
    if symbols is not None:
        names += parse_symbols(symbols)
    if symbols_file is not None:
        if not symbols_file.strip():
            raise InvalidInputError(
                "--symbols-file is empty: pass the path of a file of tickers, or - to read them "
                "from standard input"
            )
        names += read_symbols_file(symbols_file.strip())
    if not names:
        raise InvalidInputError(
            "no symbol given: pass --symbol AAPL, --symbols AAPL,MSFT or --symbols-file PATH"
        )
    unique = tuple(dict.fromkeys(names))
    if len(unique) > MAX_SYMBOLS:
        raise InvalidInputError(
            f"{counted(len(unique), 'symbol')} given, more than {MAX_SYMBOLS:,}: split the run"
        )
    calendar: list[int] = []
    if year is not None:
        calendar.append(parse_year(year))
    if years is not None:
        calendar += parse_years(years)
    if not calendar:
        raise InvalidInputError("no year given: pass --year 2023 or --years 2021-2023")
    return unique, tuple(dict.fromkeys(calendar))
