"""One writer per dataset-symbol-year-product: kernel file locks that vanish with a dead process,
or leases in a bucket."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from backend.jobs.errors import IngestError
from backend.jobs.store.base import LockRequest

if TYPE_CHECKING:
    from backend.jobs.cache.layout import SymbolYear
    from backend.jobs.core.ranges import Product
    from backend.jobs.store.base import Store

SPARE_FILES = 256  # descriptors kept free for connections, parts and logs


@contextlib.contextmanager
def locked(
    store: Store, items: Iterable[tuple[SymbolYear, Product]], timeout_s: float
) -> Iterator[None]:
    """Hold the lock of every (symbol-year, product) in `store` until the block ends.

    Taken in one order (by lock key: folder, then product name) whatever the order asked, so
    runs never deadlock on each other: kernel file locks on local disk (each holds a file
    descriptor open), leases in a bucket.
    """
    wanted = list(items)
    if not wanted:
        yield
        return
    requests = {
        folder.lock_key(product.name): LockRequest(
            folder.lock_key(product.name), f"{folder.symbol} {folder.year} {product.name}"
        )
        for folder, product in wanted
    }
    make_room_for(len(requests))
    with store.locked(list(requests.values()), timeout_s):
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
