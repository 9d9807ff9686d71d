"""The cache decision, pure: what is on disk + what is asked -> skip, verify, adopt or fetch.

Made once per product, before any network call, key check or budget check (pooch's
`download_action` is the model). Only products that must be fetched need the key, a preflight
and the budget; everything else is answered from local files.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from backend.jobs.manifest import ManifestEntry, RecordedRequest
from backend.jobs.plan import STYPE_IN, STYPE_OUT, TimeRange, year_range

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
        year = year_range(self.year)
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
        if not year.start_ns <= span.start_ns < span.end_ns <= year.end_ns:
            wrong.append(f"range {span} is not within {self.year}")
        return ", ".join(wrong) or None

    def recorded(self, span: TimeRange, chunking: str) -> RecordedRequest:
        """The request behind a file made for this key, as the manifest records it."""
        symbols = (self.symbol,)
        return RecordedRequest(
            self.dataset, self.schema, symbols, STYPE_IN, STYPE_OUT, span.start, span.end, chunking
        )

    def metadata_mismatch(self, metadata: Metadata) -> str | None:
        """Why a DBN file's own header does not answer this key (a file with no entry)."""
        if metadata.end is None:
            return "its header has no end"
        return self.mismatch(
            metadata.dataset,
            str(metadata.schema),
            list(metadata.symbols),
            str(metadata.stype_in),
            str(metadata.stype_out),
            TimeRange(metadata.start, metadata.end),
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
class OnDisk:
    """What the cache holds for one product, gathered by a few stat calls and the manifest."""

    size: int | None  # of the final file; None when there is no regular file
    not_a_file: bool  # something else (a folder) sits at the final path
    entry: ManifestEntry | None
    damage: str | None  # why the product's manifest entry (or the whole manifest) is unusable


@dataclass(frozen=True)
class Decision:
    action: Action
    state: CacheState
    why: str = ""  # for the log, when the cache could not be used as it is


def cache_state(on_disk: OnDisk, key: CacheKey) -> tuple[CacheState, str]:  # noqa: PLR0911
    """Pure: the state of one cached product against what is asked, and the detail."""
    if on_disk.not_a_file:
        return CacheState.NOT_A_FILE, "something other than a file sits at the final path"
    if not on_disk.size:
        return CacheState.MISSING, ""
    if on_disk.damage:
        return CacheState.DAMAGED, on_disk.damage
    entry = on_disk.entry
    if entry is None:
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
