"""Where files live: the small store interface (`base`), the local folder (`local`), the `s3://`
bucket (`s3`), and leases built on the interface's conditional writes (`leases`).

`open_store` opens a data dir from plain values, so any process can open the same store.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from backend.jobs.core.locations import StoreLocation, looks_like_url

if TYPE_CHECKING:
    from backend.jobs.store.base import Store


def open_store(location: StoreLocation) -> Store:
    """A local folder, or an `s3://` bucket (its URL checked before any request)."""
    if not looks_like_url(location.url):
        from backend.jobs.store.local import LocalStore

        return LocalStore(Path(location.url))
    from backend.jobs.store.s3 import S3Store

    return S3Store(location)
