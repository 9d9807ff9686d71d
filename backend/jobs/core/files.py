"""Local files written safely: unique temp names, atomic publishing, the tool's real folders.

A file is written under a temp name beside its final one (`.{name}.{pid}-{12 hex}.tmp`) and
renamed into place once complete, so a half-written file never looks finished; temp files a
killed run left are recognised by that exact name and removed under the lock of what they
belong to. The tool's working folders are created as real folders, never through a link.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import shutil
import stat
import threading
from pathlib import Path

from backend.jobs.errors import IngestError

TEMP_SUFFIX = ".tmp"
# `.{name}.{pid}-{12 hex}.tmp`, exactly what temp_path_for() makes: cleanup removes nothing else.
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.\d+-[0-9a-f]{12}\.tmp$")


def make_working_dir(base: Path, relative: Path) -> Path:
    """Create `base/relative` one level at a time, refusing any level that is not a real folder.

    `base` may be reached through links (the user's choice); what the tool creates below it may
    not, or parts would be written, and stale temps deleted, in someone else's folder.
    """
    base.mkdir(parents=True, exist_ok=True)
    path = base
    for name in relative.parts:
        path /= name
        try:
            check_working_dir(path)  # a look first: a mkdir that fails costs more, and locks
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                path.mkdir()
            check_working_dir(path)
    return path


def check_working_dir(path: Path) -> None:
    """Raise unless `path` is a real folder (not a link, not a file)."""
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        raise IngestError(
            f"{path} is a symbolic link: the tool's working folders must be real folders inside "
            f"the data dir; remove the link (rm '{path}') and run again"
        )
    if not stat.S_ISDIR(mode):
        raise IngestError(f"{path} is not a folder: remove it (rm '{path}') and run again")


def check_existing_working_dir(path: Path) -> None:
    """Before any request: a working folder already there is real and writable (one that is
    not there yet is created as a real folder when it is needed)."""
    if not (path.is_symlink() or path.exists()):
        return
    check_working_dir(path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise IngestError(
            f"{path} is not writable: fix its permissions (the tool's working folder) and run again"
        )


def writable_folder(folder: Path) -> str | None:
    """Why `folder` cannot take the run's working files, or None: created if absent (with its
    parents, as mkdir -p), then a probe file written and removed, which also catches a read-only
    mount and a full quota where permission bits say nothing (e.g. for root)."""
    probe = temp_path_for(folder / ".write-probe")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with probe.open("xb"):
            pass
        probe.unlink()
    except OSError as exc:
        named = folder if exc.filename in {None, str(probe)} else exc.filename
        return f"{exc.strerror or exc} ({named})"
    return None


_unique = itertools.count()
_unique_prefix: dict[int, str] = {}  # pid -> its 6 random hex


def temp_path_for(final: Path) -> Path:
    """A unique name beside `final`, so `os.replace` onto it is atomic (same filesystem).

    12 hex: 6 random per process (drawn again after a fork) and a 6-hex counter, so a name is
    one counter step, not one `os.urandom` call (a temp name per product and per part).
    """
    pid = os.getpid()
    prefix = _unique_prefix.get(pid) or _unique_prefix.setdefault(pid, secrets.token_hex(3))
    serial = next(_unique) & 0xFFFFFF
    return final.with_name(f".{final.name}.{pid}-{prefix}{serial:06x}{TEMP_SUFFIX}")


def remove_stale_temps(folder: Path, *names: str) -> int:
    """Delete temp files a killed run left in `folder` for `names` (final names; none: any).

    Only call while holding the lock of what they belong to. Removes nothing but regular files
    and real folders named exactly as `temp_path_for` names them; an absent folder holds none.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        match = TEMP_NAME.match(entry.name)
        wanted = match is not None and (not names or match["name"] in names)
        if wanted and (entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)):
            remove_temp(Path(entry.path))
            removed += 1
    return removed


def has_stale_temps(folder: Path, name: str) -> bool:
    """Whether a killed run left temp files of `name` (a product, or its final file) here."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return False
    return any(
        (match := TEMP_NAME.match(entry.name)) is not None and match["name"].startswith(name)
        for entry in entries
    )


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temp: Path, final: Path, *, durable: bool = True, sync_folder: bool = True) -> None:
    """Make a fully written temp file visible under its final name (atomic rename).

    Durable: the content is on disk before the rename and the rename before returning (unless
    not `sync_folder`: then the caller's next durable publish in the same folder, which syncs
    the folder, makes this rename durable with its own). Parts
    are published without it: each is decoded and checked again before it is reused, so one
    torn by a power cut is simply fetched again (and thousands of fsyncs are saved).
    """
    if durable:
        with temp.open("rb+") as handle:
            os.fsync(handle.fileno())
    temp.replace(final)
    if durable and sync_folder:
        fsync_dir(final.parent)


def writable_destination(final: Path) -> str | None:
    """Why `final` cannot be written (without writing anything), or None when it can."""
    if final.is_dir():
        return f"{final} is a folder: move it away or remove it, then run again"
    folder = final.parent
    while not folder.exists():
        if folder.is_symlink():
            return f"{folder} is a broken symbolic link: fix or remove it"
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder: move it away so {final.parent} can be created"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable: fix its permissions or choose another --data-dir"
    return None


class ScratchFiles:
    """Temp paths handed out during a run; whatever is still registered at the end is deleted."""

    def __init__(self) -> None:
        self._paths: set[Path] = set()
        self._lock = threading.Lock()

    def new(self, final: Path) -> Path:
        path = temp_path_for(final)
        with self._lock:
            self._paths.add(path)
        return path

    def new_dir(self, final: Path) -> Path:
        """A temp folder beside `final`, for a file written by code that cannot be stopped."""
        path = self.new(final)
        path.mkdir()
        return path

    def forget(self, path: Path) -> None:
        with self._lock:
            self._paths.discard(path)

    def discard(self, path: Path) -> None:
        remove_temp(path)
        self.forget(path)

    def remove_all(self) -> None:
        with self._lock:
            paths, self._paths = self._paths, set()
        for path in paths:
            with contextlib.suppress(OSError):
                remove_temp(path)


def remove_temp(path: Path, attempts: int = 5) -> None:
    """Delete a temp file, or a temp folder with what is in it.

    Retried while a writer that was abandoned (a stopped download) still adds its file: once
    the folder is gone, that writer can no longer create anything.
    """
    for attempt in range(attempts):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            return
        except OSError:
            if attempt + 1 == attempts:
                raise
            continue
        return
