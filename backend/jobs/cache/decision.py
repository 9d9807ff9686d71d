"""The cache decision, pure: what is on disk + what is asked -> skip, verify, adopt or fetch.

Made once per product, before any network call, key check or budget check (pooch's
`download_action` is the model). Only products that must be fetched need the key, a preflight
and the budget; everything else is answered from local files.

A file with no usable manifest entry is adopted only if its own DBN header is the request's
(`adoption`): dataset, schema, symbol, stypes and the exact range. The whole calendar year, or
the current year from January 1 to a moment already past, is known to be right offline; any
other range is right only if it is what the dataset (and the symbol's listing) gives for that
year, which the service's free metadata tells: such a file waits for it, before anything billable.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from backend.jobs.cache.entry import ManifestEntry, RecordedRequest
from backend.jobs.core.ranges import (
    NS_PER_SECOND,
    STYPE_IN,
    STYPE_OUT,
    TimeRange,
    format_ns,
    ns_to_datetime,
    year_range,
)

if TYPE_CHECKING:
    from databento_dbn import Metadata


class CacheState(StrEnum):
    OK = "ok"  # final file present, its entry answers the request and its size matches
    MISSING = "missing"  # no final file (or an empty one)
    NOT_A_FILE = "not a file"  # a folder (or another non-file) sits at the final path
    SIZE_MISMATCH = "size mismatch"  # truncated or overwritten since it was recorded
    UNRECORDED = "no manifest entry"  # a file without an entry, e.g. from an older version
    DAMAGED = "damaged manifest entry"  # an entry this version cannot read
    OTHER_REQUEST = "another request"  # the entry records data for another request
    FOREIGN = "foreign"  # no entry, and the file's own header is another request's


class Action(StrEnum):
    SKIP = "skip"  # cached: answer from the manifest
    VERIFY = "verify"  # cached, but --verify: re-hash, then skip or fetch
    ADOPT = "adopt"  # a file with no usable entry: validate offline, then record or fetch
    FETCH = "fetch"  # download


@dataclass(frozen=True)
class CacheKey:
    """What one product of one run asks for; a cached file is reused only if it answers it."""

    dataset: str
    schema: str
    symbol: str
    year: int

    def mismatch(  # noqa: PLR0917  the fields of a request, compared one by one
        self,
        dataset: str,
        schema: str,
        symbols: list[str] | tuple[str, ...],
        stype_in: str,
        stype_out: str,
        span: TimeRange,
    ) -> str | None:
        """Why a request (as recorded, or as a file's metadata says) does not answer this key."""
        wrong = self.identity_mismatch(dataset, schema, symbols, stype_in, stype_out)
        if not self.within_year(span):
            wrong = f"{wrong}, " if wrong else ""
            return f"{wrong}range {span} is not within {self.year}"
        return wrong

    def identity_mismatch(
        self,
        dataset: str,
        schema: str,
        symbols: list[str] | tuple[str, ...],
        stype_in: str,
        stype_out: str,
    ) -> str | None:
        """Why what a request names (everything but its range) is not this key's."""
        expected = {
            "dataset": (dataset, self.dataset),
            "schema": (schema, self.schema),
            "symbols": (list(symbols), [self.symbol]),
            "stype_in": (stype_in, STYPE_IN),
            "stype_out": (stype_out, STYPE_OUT),
        }
        wrong = [
            f"{key} {got!r} (asked {want!r})"
            for key, (got, want) in expected.items()
            if got != want
        ]
        return ", ".join(wrong) or None

    def within_year(self, span: TimeRange) -> bool:
        year = year_range(self.year)
        return year.start_ns <= span.start_ns < span.end_ns <= year.end_ns

    def recorded(self, span: TimeRange, chunking: str) -> RecordedRequest:
        """The request behind a file made for this key, as the manifest records it."""
        symbols = (self.symbol,)
        return RecordedRequest(
            self.dataset, self.schema, symbols, STYPE_IN, STYPE_OUT, span.start, span.end, chunking
        )

    def entry_mismatch(self, entry: ManifestEntry) -> str | None:
        request = entry.request
        return self.mismatch(
            request.dataset,
            request.schema,
            request.symbols,
            request.stype_in,
            request.stype_out,
            request.span,
        )


@dataclass(frozen=True)
class FileHeader:
    """What a DBN file's own header says it holds: all a file with no entry is judged by."""

    dataset: str
    schema: str
    symbols: tuple[str, ...]
    stype_in: str
    stype_out: str
    span: TimeRange | None  # None: the header has no end

    @classmethod
    def of(cls, metadata: Metadata) -> FileHeader:
        end = metadata.end
        return cls(
            dataset=str(metadata.dataset),
            schema=str(metadata.schema),
            symbols=tuple(metadata.symbols),
            stype_in=str(metadata.stype_in),
            stype_out=str(metadata.stype_out),
            span=None if end is None else TimeRange(metadata.start, end),
        )


class Fit(StrEnum):
    ADOPT = "adopt"  # the header is the request's: record the file, fetch nothing
    ASK = "ask"  # right only if the dataset has no more for the year: its free metadata tells
    REFUSE = "refuse"  # another request's file: fetch it again


@dataclass(frozen=True)
class Adoption:
    fit: Fit
    why: str = ""  # what the file holds instead (refuse), or what it covers (ask)


def adoption(  # noqa: PLR0911  one answer per case, in the order they are checked
    key: CacheKey, header: FileHeader, *, now_ns: int, expected: TimeRange | None = None
) -> Adoption:
    """Pure: whether a file with no usable manifest entry answers `key`, by its own header.

    `expected` is the range a fetch of `key` asks for (the year clamped to the dataset and to
    where the symbol is listed), when the service's metadata has told it; without it, only a
    range that is right whatever the dataset holds is adopted: the whole calendar year, or the
    current year from January 1 to a moment already past (the year so far, as a recorded fetch
    of the current year is kept).
    """
    other = key.identity_mismatch(
        header.dataset, header.schema, header.symbols, header.stype_in, header.stype_out
    )
    if other:
        return Adoption(Fit.REFUSE, f"holds another request's data ({other})")
    if header.span is None:
        return Adoption(Fit.REFUSE, "has a header without an end")
    span, year = header.span, year_range(key.year)
    if not key.within_year(span):
        return Adoption(Fit.REFUSE, f"covers {span_text(span)}, outside the year {key.year}")
    so_far = (
        ns_to_datetime(now_ns).year == key.year
        and span.start_ns == year.start_ns
        and span.end_ns <= now_ns
    )
    if span == year or so_far:
        return Adoption(Fit.ADOPT)
    if expected is None:
        return Adoption(Fit.ASK, f"covers {span_text(span)}, part of the year {key.year}")
    if span == expected:
        return Adoption(Fit.ADOPT)
    if expected == year:
        return Adoption(Fit.REFUSE, f"covers {span_text(span)}, not the year {span_text(year)}")
    whole = f"all {key.dataset} has of {key.year} for {key.symbol}"
    return Adoption(Fit.REFUSE, f"covers {span_text(span)}, not {span_text(expected)} ({whole})")


def span_text(span: TimeRange) -> str:
    """`2023-01-01..2024-01-01` (end exclusive); a bound off midnight in full."""

    def moment(ns: int) -> str:
        return format_ns(ns)[:10] if ns % (86_400 * NS_PER_SECOND) == 0 else format_ns(ns)

    return f"{moment(span.start_ns)}..{moment(span.end_ns)}"


@dataclass(frozen=True)
class OnDisk:
    """What the cache holds for one product, gathered by a few stat calls and the manifest."""

    size: int | None  # of the final file; None when there is no regular file
    not_a_file: bool  # something else (a folder) sits at the final path
    entry: ManifestEntry | None
    damage: str | None  # why the product's manifest entry (or the whole manifest) is unusable
    # A file with no entry: its own header when it was read (status does, `data` scans it
    # later), or why it could not be.
    header: FileHeader | None = None
    header_problem: str | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    state: CacheState
    why: str = ""  # for the log, when the cache could not be used as it is


def cache_state(  # noqa: PLR0911  one answer per state
    on_disk: OnDisk, key: CacheKey, *, now_ns: int = 0
) -> tuple[CacheState, str]:
    """Pure: the state of one cached product against what is asked, and the detail.

    A file with no entry whose header was read is `foreign` when that header is another
    request's; one whose range only the dataset can confirm stays unrecorded, the detail saying
    what it covers (`now_ns`: the moment the year so far is judged against).
    """
    if on_disk.not_a_file:
        return CacheState.NOT_A_FILE, "something other than a file sits at the final path"
    if not on_disk.size:
        return CacheState.MISSING, ""
    if on_disk.damage:
        return CacheState.DAMAGED, on_disk.damage
    entry = on_disk.entry
    if entry is None:
        if on_disk.header is None:
            problem = on_disk.header_problem
            return CacheState.UNRECORDED, f"its header cannot be read: {problem}" if problem else ""
        verdict = adoption(key, on_disk.header, now_ns=now_ns)
        if verdict.fit is Fit.REFUSE:
            return CacheState.FOREIGN, f"the file {verdict.why}"
        if verdict.fit is Fit.ASK:
            return CacheState.UNRECORDED, (
                f"the file {verdict.why}: adopted only if that is all the dataset has, "
                "else fetched again"
            )
        return CacheState.UNRECORDED, ""
    other = key.entry_mismatch(entry)
    if other:
        return CacheState.OTHER_REQUEST, other
    if entry.bytes != on_disk.size:
        return (
            CacheState.SIZE_MISMATCH,
            f"{on_disk.size} bytes, the manifest recorded {entry.bytes}",
        )
    return CacheState.OK, ""


# What to do, and what to log, for each state that is not OK.
RESPONSES: dict[CacheState, tuple[Action, str]] = {
    CacheState.MISSING: (Action.FETCH, ""),
    CacheState.NOT_A_FILE: (Action.FETCH, ""),  # the destination check names it, before any request
    CacheState.UNRECORDED: (Action.ADOPT, ""),
    CacheState.DAMAGED: (Action.ADOPT, "has a damaged manifest entry ({}); repairing the manifest"),
    CacheState.OTHER_REQUEST: (Action.FETCH, "holds data for another request ({}); re-downloading"),
    CacheState.FOREIGN: (Action.FETCH, "is not this request's: {}; fetching it again"),
    CacheState.SIZE_MISMATCH: (Action.FETCH, "is {}; re-downloading"),
}


def decide(on_disk: OnDisk, key: CacheKey, *, force: bool, verify: bool) -> Decision:
    """Pure: skip, verify, adopt or fetch one product."""
    state, detail = cache_state(on_disk, key)
    if force:
        return Decision(Action.FETCH, state)
    if state is CacheState.OK:
        return Decision(Action.VERIFY if verify else Action.SKIP, state)
    action, why = RESPONSES[state]
    return Decision(action, state, why.format(detail))
