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
released or expired, or at once when its holder is a dead process on this very machine.
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
from backend.jobs.store import ConflictError, LockRequest, ObjectInfo

PART_SIZE = 8 * 2**20  # multipart part size; memory in flight is UPLOAD_THREADS parts
UPLOAD_THREADS = 4
READ_CHUNK = 1 << 20
LEASE_TTL_S = 60.0  # a lease not renewed for this long may be taken over by another machine
LEASE_WAIT_POLL_S = 1.0
STORE_RETRIES = 3
STORE_RETRY_TIMEOUT_S = 15
S3_CODE = re.compile(r"<Code>([^<]*)</Code>")
S3_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


def split_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (bucket, `some/prefix`); refused unless a bucket is named."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket or any(part in ("", ".", "..") for part in prefix.strip("/").split("/")[1:]):
        from backend.jobs.errors import InvalidInputError

        raise InvalidInputError(
            f"data dir {url!r} is not an S3 location: write s3://BUCKET or s3://BUCKET/PREFIX"
        )
    return bucket, prefix.strip("/")


@dataclass(frozen=True)
class Lease:
    holder: str  # host:pid:random
    expires_at: datetime
    released: bool = False

    @classmethod
    def parse(cls, data: bytes) -> Lease | None:
        try:
            raw = json.loads(data)
            expires = datetime.fromisoformat(raw["expires_at"])
            return cls(str(raw["holder"]), expires, bool(raw.get("released")))
        except (ValueError, KeyError, TypeError):
            return None  # not a lease this tool wrote: treated as expired

    def body(self) -> bytes:
        fields = {"holder": self.holder, "expires_at": self.expires_at.isoformat()}
        return json.dumps({**fields, "released": True} if self.released else fields).encode()

    def gone(self, now: datetime) -> bool:
        """Released, expired, or held by a process of this machine that no longer exists."""
        if self.released or self.expires_at <= now:
            return True
        host, _, rest = self.holder.partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


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
        import obstore

        try:
            obstore.list_with_delimiter(self._store, "raw")
        except obstore.exceptions.NotFoundError:
            return False
        except Exception as exc:  # noqa: BLE001  obstore's errors, one line to the user
            if "NoSuchBucket" in str(exc):
                return False
            raise self._failed(exc, "list") from None
        return True

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
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
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

    def _lease(self, holder: str) -> bytes:
        expires = datetime.now(UTC) + timedelta(seconds=self.lease_ttl_s)
        return Lease(holder, expires).body()

    def _acquire(self, lock: LockRequest, holder: str, timeout_s: float) -> str:
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
            if other is None or other.gone(datetime.now(UTC)):
                try:
                    taken = self.write(lock.key, self._lease(holder), expected=tag)
                except ConflictError:
                    continue
                if other is None or not other.released:
                    who = other.holder if other else "unknown"
                    logger.info("took over the lease on {} from {} (expired)", lock.label, who)
                return taken
            if time.monotonic() >= deadline:
                raise IngestError(
                    f"another run ({other.holder}) holds the lease on {lock.label} until "
                    f"{other.expires_at:%H:%M:%S} UTC (renewed while it works): wait for it or "
                    "raise --lock-timeout"
                )
            if not waiting:
                waiting = True
                logger.info(
                    "another run ({}) is ingesting {}; waiting up to {:.0f}s for it",
                    *(other.holder, lock.label, timeout_s),
                )
            time.sleep(min(LEASE_WAIT_POLL_S, max(0.0, deadline - time.monotonic())))

    def _renew(self, held: dict[str, str], holder: str, stop: threading.Event) -> None:
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
