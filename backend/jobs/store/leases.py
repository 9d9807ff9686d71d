"""Leases: one writer per key across machines, built on any store's conditional writes.

A lease is a small object created only if absent (`write(expected=None)`, `If-None-Match: *`
in a bucket) that names its holder and an expiry; it is renewed while the run works (`write`
against the version read, `If-Match` on its ETag), and marked released at the end, never
deleted: a delete could remove the lease another run has just taken over. A lease is taken
over once released or expired, or at once when its holder is provably dead: a process of this
very machine, boot and PID namespace that no longer exists (a pid seen from another container
means nothing, so a holder there is waited for until its lease expires).

Only `Store.read` and `Store.write` are used, so leases work on any store; a bucket uses them
(a local data dir has kernel file locks, which vanish with their process).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loguru import logger

from backend.jobs.errors import IngestError
from backend.jobs.store.base import ConflictError, LockRequest, Store

LEASE_TTL_S = 60.0  # a lease not renewed for this long may be taken over by another machine
LEASE_WAIT_POLL_S = 1.0
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")  # Linux: a new random id at every boot
PID_NAMESPACE = Path("/proc/self/ns/pid")  # Linux: its inode names this process's PID namespace


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: a process, named so that a pid is only ever compared with the pids
    it can see. Containers often share a hostname (or get the host's): the boot id tells
    machines apart, the PID-namespace inode tells containers on one machine apart.
    `boot_id`/`pid_ns` are None when unknown (not Linux, or a lease an older version wrote).
    """

    label: str  # for people: in messages and the lease's `holder` field
    host: str = ""
    boot_id: str | None = None
    pid_ns: int | None = None
    pid: int | None = None

    @classmethod
    def current(cls) -> Holder:
        host, pid, nonce = socket.gethostname(), os.getpid(), uuid.uuid4().hex[:8]
        boot_id, pid_ns = _boot_id(), _pid_namespace()
        where = f"pid ns {pid_ns}" if pid_ns is not None else "pid ns ?"
        where += f", boot {boot_id[:8]}" if boot_id else ", boot ?"
        # No ':' in the label: versions before this one read `host:pid:…` from it and took a
        # lease of "their" host with an invisible pid over at once; this label never matches.
        label = f"{host} pid {pid} ({where}) run {nonce}"
        return cls(label, host, boot_id, pid_ns, pid)

    def fields(self) -> dict[str, Any]:
        return {
            "holder": self.label,
            "host": self.host,
            "boot_id": self.boot_id,
            "pid_ns": self.pid_ns,
            "pid": self.pid,
        }

    @classmethod
    def from_fields(cls, raw: dict[str, Any]) -> Holder:
        """Defensive: any field may be missing or of another type (older or foreign leases)."""
        boot_id, pid_ns, pid = raw.get("boot_id"), raw.get("pid_ns"), raw.get("pid")
        return cls(
            str(raw["holder"]),
            host=raw["host"] if isinstance(raw.get("host"), str) else "",
            boot_id=boot_id if isinstance(boot_id, str) and boot_id else None,
            pid_ns=pid_ns if isinstance(pid_ns, int) and not isinstance(pid_ns, bool) else None,
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
        )

    def sees_pids_of(self, other: Holder) -> bool:
        """Pure: `other`'s pid means the same process here (same machine, boot and PID
        namespace), so whether it is alive can be checked. Unknown never counts as same."""
        return (
            bool(self.host)
            and self.host == other.host
            and self.boot_id is not None
            and self.boot_id == other.boot_id
            and self.pid_ns is not None
            and self.pid_ns == other.pid_ns
        )


def _boot_id() -> str | None:
    try:
        return BOOT_ID.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _pid_namespace() -> int | None:
    try:
        return PID_NAMESPACE.stat().st_ino
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists in this PID namespace (signal 0 checks only)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


@dataclass(frozen=True)
class Lease:
    holder: Holder
    expires_at: datetime
    released: bool = False

    @classmethod
    def parse(cls, data: bytes) -> Lease | None:
        """A lease this tool wrote, in this version's shape or an older one; else None."""
        try:
            raw = json.loads(data)
            expires = datetime.fromisoformat(raw["expires_at"])
            if expires.tzinfo is None:
                return None
            return cls(Holder.from_fields(raw), expires, raw.get("released") is True)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # not a lease this tool wrote: treated as expired

    def body(self) -> bytes:
        fields = {**self.holder.fields(), "expires_at": self.expires_at.isoformat()}
        return json.dumps({**fields, "released": True} if self.released else fields).encode()


def takeover(
    lease: Lease | None, me: Holder, now: datetime, alive: Callable[[int], bool] = pid_alive
) -> str | None:
    """Pure but for `alive`: why a lease found held may be taken over now, or None (wait).

    At once only when it is released, unreadable, or its holder is provably dead: a process
    of this very machine, boot and PID namespace that no longer exists. A holder whose pid
    this process cannot see (another machine, container or boot; or an older lease without
    those fields) is waited for until the lease expires (it is renewed while it works).
    """
    if lease is None:
        return "unreadable"
    if lease.released:
        return "released"
    if lease.expires_at <= now:
        return "expired"
    pid = lease.holder.pid
    if pid is not None and me.sees_pids_of(lease.holder) and not alive(pid):
        return "its process no longer exists"
    return None


class Leases:
    """The leases one run holds on a store, renewed by a thread while they are held.

    `lost` is set when another run took one over (after this one stopped renewing in time):
    whoever publishes under these leases must then publish nothing more.
    """

    def __init__(self, store: Store, ttl_s: float = LEASE_TTL_S) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.holder = Holder.current()
        self.lost = threading.Event()

    @contextlib.contextmanager
    def held(self, locks: list[LockRequest], timeout_s: float) -> Iterator[None]:
        """Hold a lease on every key (taken in key order, so runs never deadlock)."""
        held: dict[str, str] = {}  # key -> the version this run last wrote
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(held, stop), name="lease-renewal", daemon=True
        )
        try:
            for lock in sorted(locks, key=lambda lock: lock.key):
                held[lock.key] = self._acquire(lock, timeout_s)
            renewer.start()
            yield
        finally:
            stop.set()
            if renewer.is_alive():
                renewer.join(timeout=5)
            released = Lease(self.holder, datetime.now(UTC), released=True).body()
            for key, tag in held.items():
                with contextlib.suppress(ConflictError):  # taken over: theirs now
                    self.store.write(key, released, expected=tag)

    def _body(self) -> bytes:
        return Lease(self.holder, datetime.now(UTC) + timedelta(seconds=self.ttl_s)).body()

    def _acquire(self, lock: LockRequest, timeout_s: float) -> str:
        """Create the lease, or take over one that may be taken; else wait up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            with contextlib.suppress(ConflictError):
                return self.store.write(lock.key, self._body(), expected=None)
            current = self.store.read(lock.key)
            if current is None:
                continue  # released and gone meanwhile
            other = Lease.parse(current[0])
            why = takeover(other, self.holder, datetime.now(UTC))
            if other is not None and why is None:
                self._wait(other, lock, deadline, first=not waited, timeout_s=timeout_s)
                waited = True
                continue
            with contextlib.suppress(ConflictError):  # else another run was quicker: again
                taken = self.store.write(lock.key, self._body(), expected=current[1])
                if why != "released":
                    who = other.holder.label if other else "unknown"
                    logger.info("took over the lease on {} from {} ({})", lock.label, who, why)
                return taken

    @staticmethod
    def _wait(
        other: Lease, lock: LockRequest, deadline: float, *, first: bool, timeout_s: float
    ) -> None:
        """Sleep a poll while another run's live lease holds `lock`; refuse past the deadline."""
        if time.monotonic() >= deadline:
            raise IngestError(
                f"another run ({other.holder.label}) holds the lease on {lock.label} until "
                f"{other.expires_at:%H:%M:%S} UTC (renewed while it works): wait for it or "
                "raise --lock-timeout"
            )
        if first:
            logger.info(
                "another run ({}) is ingesting {}; waiting up to {:.0f}s for it",
                *(other.holder.label, lock.label, timeout_s),
            )
        time.sleep(min(LEASE_WAIT_POLL_S, max(0.0, deadline - time.monotonic())))

    def _renew(self, held: dict[str, str], stop: threading.Event) -> None:
        """Push every lease's expiry forward a third of the way through its life."""
        while not stop.wait(self.ttl_s / 3):
            for key, tag in list(held.items()):
                try:
                    held[key] = self.store.write(key, self._body(), expected=tag)
                except ConflictError:
                    logger.error("the lease on {} was taken over by another run", key)
                    self.lost.set()
                except IngestError as exc:
                    logger.warning("could not renew the lease on {} ({}); retrying", key, exc)
