"""One writer per dataset-symbol-year-product: kernel file locks that vanish with a dead process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from filelock import FileLock, Timeout
from loguru import logger

from backend.jobs.cache import YearFolder
from backend.jobs.errors import IngestError
from backend.jobs.plan import Product


@contextlib.contextmanager
def locked(folder: YearFolder, products: Iterable[Product], timeout_s: float) -> Iterator[None]:
    """One writer per symbol-year-product; kernel locks vanish with a dead process.

    Taken in one order (by product name) whatever the order asked, so runs never deadlock.
    """
    folder.make_locks()
    with contextlib.ExitStack() as stack:
        for product in sorted(products, key=lambda product: product.name):
            lock = FileLock(folder.lock(product.name))
            try:
                stack.enter_context(lock.acquire(timeout=0))
            except Timeout:
                logger.info(
                    "another run is ingesting {} {} {}; waiting up to {:.0f}s for it",
                    folder.symbol,
                    folder.year,
                    product.name,
                    timeout_s,
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
