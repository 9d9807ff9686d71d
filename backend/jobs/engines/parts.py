"""Download one chunk to a validated part file, retrying what is worth retrying; the one place
a `Part` is made (`publish_part`)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeVar

from loguru import logger

from backend.jobs.client.retry import RetryPolicy, retrying
from backend.jobs.core.dbn import (
    HeaderFields,
    PartFile,
    StreamSummary,
    encode_header,
    request_mismatch,
    scan,
)
from backend.jobs.core.files import ScratchFiles, publish
from backend.jobs.core.ranges import TimeRange, format_ns, has_weekday
from backend.jobs.core.request import RangeRequest
from backend.jobs.errors import CorruptFileError, NoDataError, RunStoppedError, TransientError

if TYPE_CHECKING:
    from backend.jobs.cache.layout import YearFolder

T = TypeVar("T")
RETRIED = (TransientError, CorruptFileError)  # a chunk is asked again after either


class Downloader(Protocol):
    def download(self, request: RangeRequest, path: Path) -> None: ...


@dataclass(frozen=True)
class Part:
    """A finished chunk on disk whose content matches its request.

    Always re-encoded in the canonical `PartFile` layout (even when it alone makes the
    product), its records frames ready to be copied into the merge.
    """

    request: RangeRequest
    path: Path
    summary: StreamSummary
    downloaded: bool  # False when a previous run left it behind
    layout: PartFile


@dataclass(frozen=True)
class PartPlace:
    """Where a chunk's part is written. One of several chunks is `kept` at `path`, in its
    product's parts folder, until the merge (and reused by a run that resumes); a product's
    only chunk is its file: written beside it (`path` is the final file) and published from
    there, with no parts folder to make and remove."""

    path: Path
    kept: bool

    @classmethod
    def of(cls, folder: YearFolder, product: str, span: TimeRange, chunks: int) -> PartPlace:
        if chunks == 1:
            return cls(folder.final(product), kept=False)
        return cls(part_path(folder.parts(product), span), kept=True)

    @property
    def final(self) -> Path | None:
        return self.path if self.kept else None


def publish_part(
    temp: Path,
    final: Path | None,
    request: RangeRequest,
    summary: StreamSummary,
    *,
    downloaded: bool,
) -> Part:
    """A checked, re-encoded part moved from its temp file into place: the one way to make one.

    Without `final` (the product's only chunk: the part is the product's file) it stays where
    it was written, beside the final file, and is published from there, or removed with the
    run's scratch files: no parts folder, no rename, for the common one-request product.
    """
    if final is not None:
        publish(temp, final, durable=False)
    layout = PartFile.written(final or temp, summary.metadata_bytes)
    return Part(request, final or temp, summary, downloaded=downloaded, layout=layout)


def part_path(parts_dir: Path, span: TimeRange) -> Path:
    def stamp(ns: int) -> str:
        return format_ns(ns).replace(":", "").replace("-", "")

    return parts_dir / f"{stamp(span.start_ns)}_{stamp(span.end_ns)}.dbn.zst"


class GrowingFile:
    """Reads a file that another thread is still writing: end of file only once it is done.

    Checking a part while it streams in means a worker is free for its next chunk as soon as
    the last byte lands, instead of decoding the whole part after the download. The reader
    stays a little behind the writer, so it wakes up rarely and decodes in larger pieces.
    """

    POLL_S = 0.02
    LAG_BYTES = 1 << 18

    def __init__(
        self,
        path: Path,
        done: threading.Event,
        stop: threading.Event,
        received: Callable[[int], None] | None = None,
    ) -> None:
        self.name = path.name
        self._path = path
        self._done = done
        self._stop = stop
        self._received = received  # told the size of each piece read, as it arrives
        self._handle: BinaryIO | None = None
        self._position = 0

    def read(self, size: int) -> bytes:
        while True:
            if self._stop.is_set():
                raise RunStoppedError(f"{self.name}: cancelled")
            finished = self._done.is_set()  # checked before reading, so no byte is missed
            if self._handle is None and self._path.exists():
                self._handle = self._path.open("rb")
            if self._handle is not None:
                ahead = os.fstat(self._handle.fileno()).st_size - self._position
                if finished or ahead >= max(size, self.LAG_BYTES):
                    data = self._handle.read(size)
                    self._position += len(data)
                    if self._received is not None and data:
                        self._received(len(data))
                    return data
            elif finished:
                return b""
            self._done.wait(self.POLL_S)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def stream_and_check(
    fetch: Callable[[], None],
    served: Path,
    check: Callable[[GrowingFile], T],
    *,
    stop: threading.Event,
    received: Callable[[int], None] | None = None,
) -> T:
    """Run `fetch` (which writes `served`) while `check` reads (and re-encodes) what has
    arrived so far.

    The download runs on a daemon thread: when the run stops, the check ends at once and the
    stream is abandoned (its read is bounded by --timeout, and a chunk's folder is removed so it
    cannot leave a file behind); otherwise the download is always waited for.
    """
    done = threading.Event()
    failure: list[BaseException] = []

    def download() -> None:
        try:
            fetch()
        except BaseException as exc:  # noqa: BLE001  handed to the checking thread below
            failure.append(exc)
        finally:
            done.set()

    fetcher = threading.Thread(
        target=download, name=f"{threading.current_thread().name}-fetch", daemon=True
    )
    fetcher.start()
    growing = GrowingFile(served, done, stop, received)
    try:
        result = check(growing)
    except RunStoppedError:
        raise
    except BaseException:
        fetcher.join()  # never leave the SDK writing a file that is about to be deleted
        if failure:  # a broken download explains a broken part better than the part does
            raise failure[0] from None
        raise
    finally:
        growing.close()
    fetcher.join()
    if failure:
        raise failure[0]
    return result


def check_part(
    path: Path | GrowingFile,
    request: RangeRequest,
    record_size: int,
    recode_to: Path | None = None,
) -> StreamSummary:
    """A part is finished only if it decodes completely and answers exactly this request."""
    summary = scan(path, record_size, start_ns=request.span.start_ns, recode_to=recode_to)
    wrong = request_mismatch(summary.metadata, request)
    if wrong:
        raise CorruptFileError(f"{path.name} does not match its request: {wrong}")
    return summary


def fetch_chunk(
    *,
    client: Downloader,
    request: RangeRequest,
    record_size: int,
    place: PartPlace,
    scratch: ScratchFiles,
    policy: RetryPolicy,
    stop: threading.Event,
    label: str,
    empty_header: HeaderFields | None = None,
    received: Callable[[int], None] | None = None,
) -> Part:
    """Reuse a valid part from an earlier run, or download, check, re-encode and publish it.

    With `empty_header`, a chunk the service refuses as holding nothing to resolve (a range
    with no session day) becomes an empty part with that header, as an empty stream would.
    """
    if place.kept and (kept := reusable_part(place.path, request, record_size, label, scratch)):
        return kept

    def attempt() -> Part:
        inflight = scratch.new_dir(place.path)  # the SDK's file lives here until it is checked
        served = inflight / place.path.name
        recoded = scratch.new(place.path)
        try:
            began = time.monotonic()
            try:
                summary = stream_and_check(
                    lambda: client.download(request, served),
                    served,
                    lambda source: check_part(source, request, record_size, recode_to=recoded),
                    stop=stop,
                    received=received,
                )
            except NoDataError:
                if empty_header is None:
                    raise
                log_nothing_to_resolve(label, request.span)
                summary = empty_part(served, request, empty_header, record_size, recoded)
            logger.debug(
                "{}: {} records, {} bytes kept, in {:.2f}s",
                *(label, summary.records, summary.bytes, time.monotonic() - began),
            )
            part = publish_part(recoded, place.final, request, summary, downloaded=True)
        except BaseException:
            scratch.discard(recoded)
            raise
        finally:
            scratch.discard(inflight)
        if place.kept:
            scratch.forget(recoded)  # now the part in the parts folder
        return part

    return retrying(attempt, policy=policy, stop=stop, label=label, retry_on=RETRIED)


def log_nothing_to_resolve(label: str, span: TimeRange) -> None:
    # Expected for a chunk of weekend or holiday days; worth a look otherwise.
    level = "DEBUG" if not has_weekday(span) else "WARNING"
    logger.log(level, "{}: the service resolves nothing here; empty part(s)", label)


def empty_part(
    path: Path,
    request: RangeRequest,
    header: HeaderFields,
    record_size: int,
    recode_to: Path,
) -> StreamSummary:
    """What an empty stream for `request` would be: its header and no record, checked."""
    path.write_bytes(PartFile.header_frame(encode_header(request, header)))
    return check_part(path, request, record_size, recode_to=recode_to)


def reusable_part(
    final: Path, request: RangeRequest, record_size: int, label: str, scratch: ScratchFiles
) -> Part | None:
    """A part an earlier run finished for this request, checked again; None if there is none.

    It is re-encoded as it is checked: a part left by another version (another framing, another
    zstd) then merges into the same bytes as a part downloaded now.
    """
    if not final.exists():
        return None
    recoded = scratch.new(final)
    try:
        summary = check_part(final, request, record_size, recode_to=recoded)
        return publish_part(recoded, final, request, summary, downloaded=False)
    except CorruptFileError as exc:
        logger.warning("{}: discarding unusable part {}: {}", label, final.name, exc)
        final.unlink(missing_ok=True)
        return None
    finally:
        scratch.discard(recoded)


def fetch_group_chunk(
    *,
    client: Downloader,
    request: RangeRequest,
    record_size: int,
    places: Mapping[str, PartPlace],
    empty_headers: Mapping[str, HeaderFields],
    scratch: ScratchFiles,
    policy: RetryPolicy,
    stop: threading.Event,
    label: str,
    received: Callable[[int], None] | None = None,
) -> dict[str, Part]:
    """One chunk of several symbols: one request, split on arrival into one part per symbol.

    Symbols whose part an earlier run finished are not asked again. Each part is what a
    request for its symbol alone returns; a chunk the service refuses as holding nothing to
    resolve gives every symbol an empty part, as for a single symbol.
    """
    from backend.jobs.engines.split import split_by_symbol

    def alone(symbol: str) -> RangeRequest:
        return RangeRequest(request.dataset, (symbol,), request.schema, request.span)

    reuse = (record_size, label, scratch)
    parts: dict[str, Part] = {}
    for symbol, place in places.items():
        if place.kept and (kept := reusable_part(place.path, alone(symbol), *reuse)):
            parts[symbol] = kept
    missing = tuple(symbol for symbol in request.symbols if symbol not in parts)
    if not missing:
        return parts
    asked = RangeRequest(request.dataset, missing, request.schema, request.span)

    def attempt() -> dict[str, Part]:
        inflight = scratch.new_dir(places[missing[0]].path)  # the SDK's file, until it is split
        served = inflight / "group.dbn.zst"
        temps = {symbol: scratch.new(places[symbol].path) for symbol in missing}
        try:
            try:
                summaries = stream_and_check(
                    lambda: client.download(asked, served),
                    served,
                    lambda source: split_by_symbol(source, asked, record_size, temps, inflight),
                    stop=stop,
                    received=received,
                )
            except NoDataError:
                log_nothing_to_resolve(label, request.span)
                summaries = {
                    s: empty_part(served, alone(s), empty_headers[s], record_size, temps[s])
                    for s in missing
                }
            made = {
                s: publish_part(temps[s], places[s].final, alone(s), summaries[s], downloaded=True)
                for s in missing
            }
        except BaseException:
            for temp in temps.values():
                scratch.discard(temp)
            raise
        finally:
            scratch.discard(inflight)
        for symbol in missing:
            if places[symbol].kept:
                scratch.forget(temps[symbol])  # now the part in its parts folder
        return made

    parts.update(retrying(attempt, policy=policy, stop=stop, label=label, retry_on=RETRIED))
    return parts
