"""The store interface: where the cache's files live, a local folder or an S3 bucket.

Keys are POSIX paths below the data dir; what they mean (the layout) is the cache's business,
a store knows only keys. Only final files, manifests, job records and locks go through a
store: parts and files being written stay on local disk (the data dir itself, or the work dir
of a bucket's run).

    head      size (and tag) of an object, without reading it
    read      a small object whole, with the tag a conditional write compares against
    reader    a large object as a stream (verify, adoption)
    write     a small object, only if it is still the version read (None: still absent)
    put       a small object, whatever was there (atomic); delete
    publish   a finished local file becomes the object, whole or not at all
    listing   the objects below a prefix; exists: whether the data dir holds anything
    locked    one writer per key at a time (kernel file locks on disk, leases in a bucket)

`write` is the one primitive leases (`store.leases`) and manifest merges are built on.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from backend.jobs.core.dbn import Readable

READ_SIZE = 1 << 20


class ConflictError(Exception):
    """A conditional write lost: the object changed (or appeared) since it was read."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    tag: str | None  # the version a conditional write compares with (an ETag in a bucket)
    is_file: bool = True  # False: something that is not a file sits there (a local folder)


@dataclass(frozen=True)
class LockRequest:
    key: str
    label: str  # "AAPL 2023 TRADES", for the waiting messages


class Store(Protocol):
    def where(self, key: str) -> str: ...
    def exists(self) -> bool: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def read(self, key: str) -> tuple[bytes, str] | None: ...
    def reader(self, key: str) -> contextlib.AbstractContextManager[Readable]: ...
    def write(self, key: str, data: bytes, *, expected: str | None) -> str: ...
    def put(self, key: str, data: bytes) -> None: ...
    def delete(self, key: str) -> None: ...
    def publish(self, temp: Path, key: str) -> None: ...
    def listing(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def check_writable(self, keys: list[str]) -> None: ...
    def locked(
        self, locks: list[LockRequest], timeout_s: float
    ) -> contextlib.AbstractContextManager[None]: ...


def sha256_of(store: Store, key: str) -> str:
    """Streamed through the hash: no local copy, constant memory."""
    digest = hashlib.sha256()
    with store.reader(key) as source:
        while block := source.read(READ_SIZE):
            digest.update(block)
    return digest.hexdigest()
