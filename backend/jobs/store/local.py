"""The data dir on local disk: keys are plain files below it, locks are kernel file locks."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from loguru import logger

from backend.jobs.core.files import (
    make_working_dir,
    publish,
    remove_stale_temps,
    temp_path_for,
    writable_destination,
)
from backend.jobs.errors import IngestError
from backend.jobs.store.base import ConflictError, LockRequest, ObjectInfo

LOCK_POLL_S = 0.05


def content_tag(data: bytes) -> str:
    """A local file's version, for conditional writes: its content's hash."""
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
        """The file's content is synced before the rename; the folder (the rename) is synced by
        the manifest write that always follows in the same folder, one folder sync instead of
        two. A power cut in between leaves no entry for the new file (its product is fetched
        again), or an entry whose file is missing or of another size (fetched again too)."""
        publish(temp, self.path(key), sync_folder=False)

    def write(self, key: str, data: bytes, *, expected: str | None) -> str:
        """Replace `key` atomically if it still holds what was read (`expected`; None: absent).

        A kernel lock beside the file makes compare-and-replace one step between processes.
        """
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with kernel_lock(path.with_name(f".{path.stem}.lock"), wait_s=None):
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
        with contextlib.ExitStack() as stack:
            for request in sorted(locks, key=lambda lock: lock.key):
                path = self._lock_folder(request.key) / PurePosixPath(request.key).name
                try:
                    stack.enter_context(kernel_lock(path, wait_s=0))
                except TimeoutError:
                    logger.info(
                        "another run is ingesting {}; waiting up to {:.0f}s for it",
                        request.label,
                        timeout_s,
                    )
                    try:
                        stack.enter_context(kernel_lock(path, wait_s=timeout_s))
                    except TimeoutError:
                        raise IngestError(
                            f"another run still holds the lock on {request.label} after "
                            f"{timeout_s:.0f}s: wait for it or raise --lock-timeout"
                        ) from None
            yield

    def _lock_folder(self, key: str) -> Path:
        """The folder of a lock file, created. The data dir's own folders may be links (to
        another disk); from the first hidden one down (the tool's, e.g. `.locks/…`) they are
        created as real folders and refused when a link, so no lock lands in a foreign folder."""
        folders = PurePosixPath(key).parent.parts
        hidden = next((n for n, name in enumerate(folders) if name.startswith(".")), len(folders))
        base = self.root.joinpath(*folders[:hidden])
        return make_working_dir(base, Path(*folders[hidden:]))


@contextlib.contextmanager
def kernel_lock(path: Path, *, wait_s: float | None) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if absent) until the block ends; TimeoutError if
    another holder keeps it past `wait_s` (None: wait as long as it takes).

    The same kernel lock `filelock` takes, so older runs and this one exclude each other; a
    few system calls instead of its bookkeeping, which cost ~0.3 ms of CPU per lock (two per
    symbol-year-product). The lock is kept only if the file locked is still the one at `path`
    (a holder may have removed it in between).
    """
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_ino == os.fstat(fd).st_ino:
                    break
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                os.close(fd)
                raise TimeoutError(path) from None
            time.sleep(LOCK_POLL_S)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
