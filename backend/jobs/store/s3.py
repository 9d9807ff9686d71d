"""`--data-dir s3://bucket/prefix`: the cache in an S3-compatible bucket, shared by many machines.

Reads, conditional writes and listings go through obstore (Rust, imported in ~20 ms: a cached
re-run stays cheap); final files are uploaded with boto3's multipart API, whose uploads can be
listed and aborted (obstore cannot), so a failed or killed upload never outlives the next run.
Credentials, region and endpoint come from the standard AWS configuration (environment,
`AWS_ENDPOINT_URL`, profiles, instance roles); nothing here takes or logs them.

One writer per symbol-year-product across machines: a lease object
`raw/databento/.locks/…/TRADES.lock` created with `If-None-Match: *`, naming its holder and
expiry, renewed while the run works (`If-Match` on its ETag), marked released at the end (never
deleted: a delete could remove the lease another run has just taken over), and taken over once
released or expired, or at once when its holder is provably dead: a process of this very
machine, boot and PID namespace that no longer exists (a pid seen from another container means
nothing, so a holder there is waited for until its lease expires).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loguru import logger

from backend.jobs.errors import IngestError
from backend.jobs.store.base import ConflictError, LockRequest, ObjectInfo

PART_SIZE = 8 * 2**20  # multipart part size; memory in flight is UPLOAD_THREADS parts
UPLOAD_THREADS = 4
READ_CHUNK = 1 << 20
LEASE_TTL_S = 60.0  # a lease not renewed for this long may be taken over by another machine
LEASE_WAIT_POLL_S = 1.0
STORE_RETRIES = 3
STORE_RETRY_TIMEOUT_S = 15
S3_CODE = re.compile(r"<Code>([^<]*)</Code>")
S3_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


S3_SCHEME = "s3://"
# AWS's rules for general purpose buckets (docs.aws.amazon.com/AmazonS3/latest/userguide/
# bucketnamingrules.html), which MinIO and R2 follow too: checked before any request, so a typo
# is named as such instead of coming back from the server as NoSuchBucket.
BUCKET_CHARS = re.compile(r"^[a-z0-9.-]+$")
IP_FORMATTED = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
BUCKET_RULE = (
    "a bucket name is 3 to 63 lower-case letters, digits, dots and hyphens, beginning and "
    "ending with a letter or digit"
)
# S3 keys end at 1,024 bytes; the layout below the prefix (dataset, symbol, year, file) needs
# the rest.
MAX_PREFIX_BYTES = 768
# `scheme://user:password@`: the password runs to the last `@` (it may hold `/`, `:` or `@`).
URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*):.*@")
URL_USER = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def redact_url(url: str) -> str:
    """The URL as it may be shown: a password masked (`s3://user:***@bucket/x`), and a lone user
    name too, which may be a key (`s3://***@bucket/x`)."""
    if URL_PASSWORD.match(url):
        return URL_PASSWORD.sub(r"\g<head>:***@", url, count=1)
    return URL_USER.sub(r"\g<head>***@", url, count=1)


def bucket_problem(bucket: str) -> str:
    """Pure: why S3 would refuse this bucket name, the first rule broken ("" when none is)."""
    broken = [
        (not 3 <= len(bucket) <= 63, f"{len(bucket)} character{'' if len(bucket) == 1 else 's'}"),
        (any(char.isupper() for char in bucket), "upper-case letters"),
        (not BUCKET_CHARS.match(bucket), "characters other than a-z, 0-9, '.' and '-'"),
        (
            not (bucket[:1].isalnum() and bucket[-1:].isalnum()),
            "it must begin and end with a letter or digit",
        ),
        (".." in bucket, "two adjacent dots"),
        (bool(IP_FORMATTED.match(bucket)), "formatted as an IP address"),
        *((bucket.startswith(p), f"the prefix {p!r} is reserved by S3") for p in RESERVED_PREFIXES),
        *((bucket.endswith(s), f"the suffix {s!r} is reserved by S3") for s in RESERVED_SUFFIXES),
    ]
    return next((reason for failed, reason in broken if failed), "")


def split_url(url: str, source: str = "data dir") -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (bucket, `some/prefix`): parsed strictly, before any request.

    Refused with one line naming `source` (the URL shown with its password masked):
    credentials, a query or fragment, a host and port, a bucket name S3 does not allow,
    control characters or a backslash, and `.`, `..` or empty (`//`) segments. One trailing
    `/` is fine. Pure: no I/O.
    """
    from backend.jobs.errors import InvalidInputError

    shown = redact_url(url)

    def refused(problem: str, fix: str = "write s3://BUCKET or s3://BUCKET/PREFIX") -> Exception:
        return InvalidInputError(f"{source} {shown!r} {problem}: {fix}")

    if url[: len(S3_SCHEME)].lower() != S3_SCHEME:
        raise refused("is not an S3 location")
    rest = url[len(S3_SCHEME) :]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if shown != url or "@" in authority:
        raise refused(
            "carries credentials",
            "take them out of the URL; S3 credentials come only from the AWS configuration "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role)",
        )
    if "?" in rest or "#" in rest:
        raise refused(
            "has a query or fragment ('?' or '#')",
            "write s3://BUCKET/PREFIX; a prefix here cannot hold '?' or '#'",
        )
    if "\\" in rest or any(ord(char) < 32 or 127 <= ord(char) < 160 for char in rest):
        raise refused("has a backslash or control characters")
    if any(0xD800 <= ord(char) <= 0xDFFF for char in rest):
        raise refused("is not valid UTF-8", "write the prefix in UTF-8")
    if ":" in authority:
        raise refused(
            "names a host and port, not a bucket",
            "write s3://BUCKET/PREFIX and put the endpoint in AWS_ENDPOINT_URL",
        )
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise refused("is not an S3 location (it names no bucket)")
    problem = bucket_problem(bucket)
    if problem:
        raise refused(f"has an invalid bucket name {bucket!r} ({problem})", BUCKET_RULE)
    segments = prefix.removesuffix("/").split("/") if prefix.removesuffix("/") else []
    if "" in segments:
        plain = "/".join(segment for segment in segments if segment)
        raise refused(
            "has an empty path segment ('//')",
            f"write it with single slashes: s3://{bucket}/{plain}",
        )
    if "." in segments or ".." in segments:
        raise refused(
            "has a '.' or '..' segment",
            "name the prefix plainly; S3 does not resolve '.' and '..' (they would be part of "
            "the key)",
        )
    prefix = "/".join(segments)
    if len(prefix.encode()) > MAX_PREFIX_BYTES:
        raise refused(
            f"has a prefix longer than {MAX_PREFIX_BYTES} bytes",
            "choose a shorter one (S3 keys end at 1,024 bytes)",
        )
    return bucket, prefix


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


class S3Store:
    """A bucket and prefix; keys below it mirror the local layout."""

    def __init__(self, url: str, *, allow_http: bool, profile: bool, lease_ttl_s: float) -> None:
        from datetime import timedelta as td

        from obstore.store import S3Store as ObjectStore

        self.bucket, self.prefix = split_url(url)
        options: dict[str, Any] = {}
        if profile:  # ~/.aws profiles and SSO: boto3's credential chain, only when configured
            from obstore.auth.boto3 import Boto3CredentialProvider

            options["credential_provider"] = Boto3CredentialProvider()
        self._store = ObjectStore(
            self.bucket,
            prefix=self.prefix or None,
            client_options={"allow_http": allow_http, "connect_timeout": "10s", "timeout": "300s"},
            retry_config={
                "max_retries": STORE_RETRIES,
                "retry_timeout": td(seconds=STORE_RETRY_TIMEOUT_S),
            },
            **options,
        )
        self.lease_ttl_s = lease_ttl_s
        self._uploader: Any = None
        self._lost = threading.Event()  # a lease was taken over: publish nothing more

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    def where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    # reads

    def exists(self) -> bool:
        """Whether the prefix holds any object: S3 has no folders, so an empty prefix is what a
        missing local folder is (a typo, or nothing cached there yet)."""
        import obstore

        try:
            listed = obstore.list_with_delimiter(self._store)
        except obstore.exceptions.NotFoundError:
            return False
        except Exception as exc:  # noqa: BLE001  obstore's errors, one line to the user
            if "NoSuchBucket" in str(exc):
                return False
            raise self._failed(exc, "list") from None
        return bool(listed["objects"] or listed["common_prefixes"])

    def head(self, key: str) -> ObjectInfo | None:
        import obstore

        try:
            meta = obstore.head(self._store, key)
        except (FileNotFoundError, obstore.exceptions.NotFoundError):
            return None
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc, f"read {key}") from None
        return ObjectInfo(key, int(meta["size"]), meta.get("e_tag"))

    def read(self, key: str) -> tuple[bytes, str] | None:
        import obstore

        try:
            result = obstore.get(self._store, key)
            data = bytes(result.bytes())
        except (FileNotFoundError, obstore.exceptions.NotFoundError):
            return None
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc, f"read {key}") from None
        return data, str(result.meta.get("e_tag"))

    @contextlib.contextmanager
    def reader(self, key: str) -> Iterator[StreamReader]:
        import obstore

        try:
            chunks = obstore.get(self._store, key).stream(min_chunk_size=READ_CHUNK)
        except (FileNotFoundError, obstore.exceptions.NotFoundError):
            raise IngestError(f"{self.where(key)} disappeared before it was read") from None
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc, f"read {key}") from None
        yield StreamReader(chunks, self.where(key), lambda exc: self._failed(exc, f"read {key}"))

    def listing(self, prefix: str) -> Iterator[ObjectInfo]:
        import obstore

        try:
            for batch in obstore.list(self._store, prefix):
                for meta in batch:
                    yield ObjectInfo(str(meta["path"]), int(meta["size"]), meta.get("e_tag"))
        except obstore.exceptions.NotFoundError:
            return
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc, "list") from None

    # writes

    def write(self, key: str, data: bytes, *, expected: str | None) -> str:
        """Put `data` only if `key` is still at version `expected` (None: still absent)."""
        import obstore

        mode: Any = "create" if expected is None else {"e_tag": expected}
        try:
            result = obstore.put(self._store, key, data, mode=mode)
        except (obstore.exceptions.AlreadyExistsError, obstore.exceptions.PreconditionError):
            raise ConflictError(key) from None
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc, f"write {key}") from None
        return str(result["e_tag"])

    def put(self, key: str, data: bytes) -> None:
        import obstore

        try:
            obstore.put(self._store, key, data)
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc, f"write {key}") from None

    def delete(self, key: str) -> None:
        import obstore

        with contextlib.suppress(FileNotFoundError, obstore.exceptions.NotFoundError):
            obstore.delete(self._store, key)

    def check_writable(self, keys: list[str]) -> None:  # noqa: ARG002  Store
        """A small write and delete under the prefix, before anything is paid for."""
        probe = f"raw/databento/.locks/.probe-{uuid.uuid4().hex}"
        self.write(probe, b"probe", expected=None)
        self.delete(probe)

    def publish(self, temp: Path, key: str) -> None:
        """Upload a finished file; the object appears whole or not at all (multipart complete).

        Memory stays at UPLOAD_THREADS parts whatever the size. Any failure (or a signal)
        aborts the upload; uploads left by a killed run are aborted before the next one.
        """
        if self._lost.is_set():
            raise IngestError(
                f"lost the lease on {self.where(key)} to another machine: nothing published; "
                "run the same command again"
            )
        from botocore.exceptions import BotoCoreError, ClientError

        client, full = self._client(), self._full(key)
        try:
            self._abort_stale_uploads(full)
            size = temp.stat().st_size
            if size <= PART_SIZE:
                with temp.open("rb") as body:
                    client.put_object(Bucket=self.bucket, Key=full, Body=body)
            else:
                self._multipart(temp, full, size)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed(exc, f"upload {key}") from None
        temp.unlink(missing_ok=True)

    def _multipart(self, temp: Path, full: str, size: int) -> None:
        client = self._client()
        upload = client.create_multipart_upload(Bucket=self.bucket, Key=full)["UploadId"]

        def send(number: int) -> dict[str, Any]:
            with temp.open("rb") as handle:
                handle.seek((number - 1) * PART_SIZE)
                body = handle.read(PART_SIZE)
            answer = client.upload_part(
                Bucket=self.bucket, Key=full, UploadId=upload, PartNumber=number, Body=body
            )
            return {"ETag": answer["ETag"], "PartNumber": number}

        try:
            count = (size + PART_SIZE - 1) // PART_SIZE
            with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="upload") as pool:
                parts = list(pool.map(send, range(1, count + 1)))
            client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload)
            raise

    def _abort_stale_uploads(self, full: str) -> None:
        """Uploads of this key left by a killed run (we hold its lease: none is live)."""
        client = self._client()
        listed = client.list_multipart_uploads(Bucket=self.bucket, Prefix=full)
        for upload in listed.get("Uploads", []):
            if upload.get("Key") == full:
                client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload["UploadId"]
                )
                logger.info("aborted an unfinished upload of {} left by an earlier run", full)

    def _client(self) -> Any:
        """boto3, imported only to upload: a cached re-run never pays for it."""
        if self._uploader is None:
            import boto3
            from botocore.config import Config

            self._uploader = boto3.session.Session().client(
                "s3",
                config=Config(
                    retries={"max_attempts": 5, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=120,
                    max_pool_connections=UPLOAD_THREADS + 2,
                ),
            )
        return self._uploader

    def _failed(self, exc: BaseException, action: str) -> IngestError:
        """One line for a storage error; credentials never appear in obstore's or boto3's text."""
        name = type(exc).__name__
        raw = str(exc)
        code, message = S3_CODE.search(raw), S3_MESSAGE.search(raw)
        if code:  # the S3 error document: its code and message say it best
            text = f"{code[1]}: {message[1] if message else ''}".strip(": ")
        else:
            text = raw.strip().splitlines()[0][:300] if raw.strip() else name
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        if "NotFound" in name or "NoSuchBucket" in text:
            hint = f"does the bucket {self.bucket} exist at this endpoint (AWS_ENDPOINT_URL)?"
        elif "Permission" in name or "Unauthenticated" in name or "AccessDenied" in text:
            hint = "check the AWS credentials and the bucket's permissions"
        else:
            hint = "check AWS_ENDPOINT_URL, the network and the bucket"
        return IngestError(f"cannot {action} in {where} ({text}): {hint}")

    # leases

    @contextlib.contextmanager
    def locked(self, locks: list[LockRequest], timeout_s: float) -> Iterator[None]:
        holder = Holder.current()
        held: dict[str, str] = {}
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(held, holder, stop), name="lease-renewal", daemon=True
        )
        try:
            for lock in sorted(locks, key=lambda lock: lock.key):
                held[lock.key] = self._acquire(lock, holder, timeout_s)
            renewer.start()
            yield
        finally:
            stop.set()
            if renewer.is_alive():
                renewer.join(timeout=5)
            released = Lease(holder, datetime.now(UTC), released=True).body()
            for key, tag in held.items():
                with contextlib.suppress(ConflictError):  # taken over: theirs now
                    self.write(key, released, expected=tag)

    def _lease(self, holder: Holder) -> bytes:
        expires = datetime.now(UTC) + timedelta(seconds=self.lease_ttl_s)
        return Lease(holder, expires).body()

    def _acquire(self, lock: LockRequest, holder: Holder, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        waiting = False
        while True:
            try:
                return self.write(lock.key, self._lease(holder), expected=None)
            except ConflictError:
                pass
            current = self.read(lock.key)
            if current is None:
                continue  # released meanwhile
            data, tag = current
            other = Lease.parse(data)
            why = takeover(other, holder, datetime.now(UTC))
            if why is not None or other is None:
                try:
                    taken = self.write(lock.key, self._lease(holder), expected=tag)
                except ConflictError:
                    continue
                if why != "released":
                    who = other.holder.label if other else "unknown"
                    logger.info("took over the lease on {} from {} ({})", lock.label, who, why)
                return taken
            if time.monotonic() >= deadline:
                raise IngestError(
                    f"another run ({other.holder.label}) holds the lease on {lock.label} until "
                    f"{other.expires_at:%H:%M:%S} UTC (renewed while it works): wait for it or "
                    "raise --lock-timeout"
                )
            if not waiting:
                waiting = True
                logger.info(
                    "another run ({}) is ingesting {}; waiting up to {:.0f}s for it",
                    *(other.holder.label, lock.label, timeout_s),
                )
            time.sleep(min(LEASE_WAIT_POLL_S, max(0.0, deadline - time.monotonic())))

    def _renew(self, held: dict[str, str], holder: Holder, stop: threading.Event) -> None:
        """Push every lease's expiry forward a third of the way through its life."""
        while not stop.wait(self.lease_ttl_s / 3):
            for key, tag in list(held.items()):
                try:
                    held[key] = self.write(key, self._lease(holder), expected=tag)
                except ConflictError:
                    logger.error("the lease on {} was taken over by another run", key)
                    self._lost.set()
                except IngestError as exc:
                    logger.warning("could not renew the lease on {} ({}); retrying", key, exc)


class StreamReader:
    """`read(size)` over an object's body streamed in chunks (never the whole in memory); a
    failure of the stream itself becomes one storage error (`failed`)."""

    def __init__(
        self, chunks: Any, name: str, failed: Callable[[BaseException], IngestError]
    ) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()
        self._failed = failed
        self.name = name

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            try:
                chunk = next(self._chunks, None)
            except Exception as exc:  # noqa: BLE001  obstore's stream errors
                raise self._failed(exc) from None
            if chunk is None:
                break
            self._buffer += bytes(chunk)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data
