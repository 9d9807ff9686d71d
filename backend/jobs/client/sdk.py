"""Everything that leans on how databento 0.88 works inside, in one place.

Each piece is guarded by a test in tests/test_client.py that fails when an SDK release changes
what it relies on: bump the pin (pyproject: `databento>=0.88,<0.89`) only together with this
module and those tests. The rest of the tool uses the SDK's public API only.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from backend.jobs.errors import DISK_FULL_ERRNOS

if TYPE_CHECKING:
    import databento

# The SDK takes no timeout: every request reads this attribute (a class attribute, 100 s, of
# BentoHttpAPI) from the API object it is sent through, connect and read alike.
TIMEOUT_ATTRIBUTE = "TIMEOUT"
# `get_range(path=)` copies the answer to its file in reads of the module global
# HTTP_STREAMING_READ_SIZE of databento.common.http (4 KiB): each read a trip through urllib3,
# ssl and the file, the GIL given up twice. 64 KiB reads cost a sixteenth of that, for the
# same bytes; the answer still arrives as it is sent (a read returns what a chunk holds).
STREAM_READ_SIZE = 1 << 16
# Failures to write the output file, which the SDK wraps like a broken stream.
WRITE_ERRNOS = DISK_FULL_ERRNOS | {errno.EROFS, errno.EACCES}


def historical(key: str, gateway: str | None, timeout_s: float) -> databento.Historical:
    """The SDK's client, every request of it bounded by `timeout_s` (connect and read), its
    answers copied to their files in STREAM_READ_SIZE reads.

    An instance attribute on each API object shadows the class's timeout. Raises the SDK's
    ValueError for a key it refuses.
    """
    import databento
    from databento.common import http

    http.HTTP_STREAMING_READ_SIZE = STREAM_READ_SIZE  # type: ignore[misc]  # see above
    sdk = databento.Historical(key=key, **({"gateway": gateway} if gateway else {}))
    for api in (sdk.metadata, sdk.symbology, sdk.timeseries, sdk.batch):
        setattr(api, TIMEOUT_ATTRIBUTE, timeout_s)
    return sdk


def close_leaked_file(exc: BaseException, path: Path) -> None:
    """Close the output file the SDK leaves open when a stream breaks.

    `timeseries.get_range(path=)` opens `path` inside the frame that raises, and the raised
    error's traceback keeps that frame, so the file stays open until the error is collected:
    close it now, so the partial file's space is freed as soon as it is unlinked. Any open
    file of that name among the traceback's locals is closed (whatever the SDK calls it).
    """
    name = os.fspath(path)
    traceback = exc.__traceback__
    while traceback is not None:
        for value in list(traceback.tb_frame.f_locals.values()):
            named = getattr(value, "name", None) in (name, path)
            if named and isinstance(value, io.IOBase) and not value.closed:
                value.close()
        traceback = traceback.tb_next


def _in_chain(exc: BaseException, matches: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception that `matches` in `exc`'s chain of causes and contexts.

    The SDK wraps a broken stream or a failed write in `BentoError(...) from None`, which hides
    the original error from the traceback but keeps it as `__context__`.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if matches(seen):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def timed_out(exc: BaseException) -> bool:
    """A connect or read timeout, also one the SDK wrapped (a stream that stalled midway)."""
    import requests
    import urllib3

    kinds = (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    return _in_chain(exc, lambda seen: isinstance(seen, kinds)) is not None


def write_error(exc: BaseException) -> OSError | None:
    """The failure to write the output file (disk full, read-only, denied) behind `exc`."""
    found = _in_chain(exc, lambda seen: getattr(seen, "errno", None) in WRITE_ERRNOS)
    return found if isinstance(found, OSError) else None
