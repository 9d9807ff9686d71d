"""One writer per dataset-symbol-year-product: kernel file locks that vanish with a dead process."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterable, Iterator

from filelock import FileLock, Timeout
from loguru import logger

from backend.jobs.cache import YearFolder
from backend.jobs.errors import IngestError
from backend.jobs.plan import Product

SPARE_FILES = 256  # descriptors kept free for connections, parts and logs


@contextlib.contextmanager
def locked(items: Iterable[tuple[YearFolder, Product]], timeout_s: float) -> Iterator[None]:
    """Hold the lock of every (symbol-year folder, product) until the block ends.

    Taken in one order (by lock path: folder, then product name) whatever the order asked, so
    runs never deadlock on each other. Each lock holds a file descriptor open.
    """
    paths = sorted(
        {folder.lock(product.name): (folder, product) for folder, product in items}.items()
    )
    make_room_for(len(paths))
    with contextlib.ExitStack() as stack:
        for path, (folder, product) in paths:
            folder.make_locks()
            lock = FileLock(path)
            try:
                stack.enter_context(lock.acquire(timeout=0))
            except Timeout:
                logger.info(
                    "another run is ingesting {} {} {}; waiting up to {:.0f}s for it",
                    *(folder.symbol, folder.year, product.name, timeout_s),
                )
                try:
                    stack.enter_context(lock.acquire(timeout=timeout_s))
                except Timeout:
                    raise IngestError(
                        f"another run still holds the lock on {folder.symbol} {folder.year} "
                        f"{product.name} after {timeout_s:.0f}s: "
                        "wait for it or raise --lock-timeout"
                    ) from None
        yield


def make_room_for(locks: int) -> None:
    """Raise the soft limit of open files when a large universe needs it (up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = locks + SPARE_FILES
    if needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise IngestError(
            f"{locks} symbol-year-products need more open files than this system allows "
            f"({hard}): raise it (ulimit -n) or split the universe into smaller runs"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
