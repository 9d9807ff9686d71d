"""Where the cache's files live: a local folder or an S3 bucket, behind one small interface.

Keys are POSIX paths below the data dir (`raw/databento/AAPL/2023/TRADES.dbn.zst`); the layout
is the same everywhere. Only final files, manifests and locks go through a store: parts and
temporary files always stay on local disk (the data dir itself, or `--work-dir` for `s3://`).

    head      size (and tag) of an object, without reading it
    read      a small object whole, with the tag a conditional write compares against
    reader    a large object as a stream (verify, adoption)
    publish   a finished local file becomes the object, atomically; nothing partial is visible
    write     a small object, only if it is still the version read (or still absent)
    put       a small object, whatever was there (atomic, durable); delete
    locked    one writer per key at a time (kernel file locks here, leases in a bucket)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from loguru import logger

from backend.jobs.cache.layout import (
    publish,
    remove_stale_temps,
    temp_path_for,
    writable_destination,
)
from backend.jobs.errors import IngestError

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
    def publish(self, temp: Path, key: str) -> None: ...
    def write(self, key: str, data: bytes, *, expected: str | None) -> str: ...
    def put(self, key: str, data: bytes) -> None: ...
    def delete(self, key: str) -> None: ...
    def listing(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def check_writable(self, keys: list[str]) -> None: ...
    def locked(
        self, locks: list[LockRequest], timeout_s: float
    ) -> contextlib.AbstractContextManager[None]: ...


class Readable(Protocol):
    name: str

    def read(self, size: int, /) -> bytes: ...


def sha256_of(store: Store, key: str) -> str:
    """Streamed through the hash: no local copy, constant memory."""
    digest = hashlib.sha256()
    with store.reader(key) as source:
        while block := source.read(READ_SIZE):
            digest.update(block)
    return digest.hexdigest()


def content_tag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalStore:
    """The data dir on local disk: the layout as plain files, kernel file locks."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalStore({self.root})"

    def path(self, key: str) -> Path:
        return self.root / key

    def where(self, key: str) -> str:
        return str(self.path(key))

    def exists(self) -> bool:
        return self.root.is_dir()

    def head(self, key: str) -> ObjectInfo | None:
        path = self.path(key)
        try:
            info = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        is_file = path.is_file()
        return ObjectInfo(key, info.st_size if is_file else 0, None, is_file=is_file)

    def read(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return data, content_tag(data)

    def reader(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        return self.path(key).open("rb")

    def publish(self, temp: Path, key: str) -> None:
        publish(temp, self.path(key))

    def write(self, key: str, data: bytes, *, expected: str | None) -> str:
        """Replace `key` atomically if it still holds what was read (`expected`; None: absent).

        A kernel lock beside the file makes compare-and-replace one step between processes.
        """
        from filelock import FileLock

        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.with_name(f".{path.stem}.lock")):
            current = self.read(key)
            if (current[1] if current else None) != expected:
                raise ConflictError(key)
            remove_stale_temps(path.parent, path.name)  # a killed writer's, under this lock
            self.put(key, data)
        return content_tag(data)

    def put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_path_for(path)
        try:
            temp.write_bytes(data)
            publish(temp, path)
        finally:
            temp.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def listing(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.path(prefix)
        if not base.is_dir():
            return
        for directory, folders, files in os.walk(base):
            folders.sort()
            for name in sorted(files):
                path = Path(directory) / name
                with contextlib.suppress(FileNotFoundError):
                    key = path.relative_to(self.root).as_posix()
                    yield ObjectInfo(key, path.stat().st_size, None)

    def check_writable(self, keys: list[str]) -> None:
        for key in keys:
            problem = writable_destination(self.path(key))
            if problem:
                raise IngestError(f"cannot write {Path(key).name}: {problem}")

    @contextlib.contextmanager
    def locked(self, locks: list[LockRequest], timeout_s: float) -> Iterator[None]:
        """Kernel file locks (released if the process dies), taken in key order."""
        from filelock import FileLock, Timeout

        from backend.jobs.cache.layout import RAW_SUBDIR, make_working_dir

        base = self.root / RAW_SUBDIR  # it may be a link; what the tool creates below may not
        base.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            for request in sorted(locks, key=lambda lock: lock.key):
                path = self.path(request.key)
                make_working_dir(base, path.parent.relative_to(base))
                lock = FileLock(path)
                try:
                    stack.enter_context(lock.acquire(timeout=0))
                except Timeout:
                    logger.info(
                        "another run is ingesting {}; waiting up to {:.0f}s for it",
                        request.label,
                        timeout_s,
                    )
                    try:
                        stack.enter_context(lock.acquire(timeout=timeout_s))
                    except Timeout:
                        raise IngestError(
                            f"another run still holds the lock on {request.label} after "
                            f"{timeout_s:.0f}s: wait for it or raise --lock-timeout"
                        ) from None
            yield
