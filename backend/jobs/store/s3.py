"""`--data-dir s3://bucket/prefix`: the cache in an S3-compatible bucket, shared by many machines.

Every request goes through obstore (Rust; imported in ~20 ms, so a cached re-run stays cheap):
reads, listings, conditional writes (`If-None-Match: *`, `If-Match`), and uploads, whose
multipart upload is aborted on any failure or signal. One a `kill -9` leaves unfinished is
invisible (the object appears only once complete) and is removed by the bucket's lifecycle rule
for incomplete multipart uploads (docs/cache.md#s3). Credentials, region and endpoint come from the
standard AWS configuration (environment, `AWS_ENDPOINT_URL`, web identity, instance roles;
`~/.aws` profiles and SSO through boto3's credential chain, only when configured); nothing here
takes or logs them. One writer per key across machines: leases (`store.leases`).
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store as ObjectStore

from backend.jobs.core.locations import StoreLocation, s3_location
from backend.jobs.errors import IngestError
from backend.jobs.store.base import ConflictError, LockRequest, ObjectInfo
from backend.jobs.store.leases import Leases

PART_SIZE = 8 * 2**20  # multipart part size; memory in flight is about UPLOAD_PARTS + 1 parts
UPLOAD_PARTS = 4  # parts uploaded at once
READ_CHUNK = 1 << 20
STORE_RETRIES = 3
STORE_RETRY_TIMEOUT_S = 15
# obstore raises the built-in FileNotFoundError for a missing object (or bucket) and OSError for
# failed streams; the rest of its errors derive from BaseError.
NOT_FOUND = (FileNotFoundError, NotFoundError)
FAILED = (OSError, BaseError)


class S3Store:
    """A bucket and prefix; its keys are the store's keys below the prefix."""

    def __init__(self, location: StoreLocation) -> None:
        self.bucket, self.prefix = s3_location(location.url, location.source)
        options: dict[str, Any] = {}
        if location.aws_profile:  # ~/.aws profiles and SSO, which obstore does not read
            from obstore.auth.boto3 import Boto3CredentialProvider

            options["credential_provider"] = Boto3CredentialProvider()
        self._store = ObjectStore(
            self.bucket,
            prefix=self.prefix or None,
            client_options={
                "allow_http": location.allow_http,
                "connect_timeout": "10s",
                "timeout": "300s",
            },
            retry_config={
                "max_retries": STORE_RETRIES,
                "retry_timeout": timedelta(seconds=STORE_RETRY_TIMEOUT_S),
            },
            **options,
        )
        self._leases = Leases(self)

    def __repr__(self) -> str:
        return f"S3Store({self.url})"

    def where(self, key: str) -> str:
        return f"{self.url}/{key}"

    @property
    def url(self) -> str:
        """The data dir as a URL, without a trailing slash."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    # reads

    def exists(self) -> bool:
        """Whether the prefix holds any object: S3 has no folders, so an empty prefix is what a
        missing local folder is (a typo, or nothing cached there yet); so is a missing bucket."""
        try:
            listed = obstore.list_with_delimiter(self._store)
        except FAILED as exc:
            if self._bucket_missing():
                return False
            raise self._failed(exc, "list") from None
        return bool(listed["objects"] or listed["common_prefixes"])

    def _bucket_missing(self) -> bool:
        """After a failed listing: a key that cannot exist is "not found", so the bucket is
        missing (where the listing is denied, S3 answers "access denied" for such a key)."""
        try:
            obstore.head(self._store, f".absent-{uuid.uuid4().hex}")
        except NOT_FOUND:
            return True
        except FAILED:
            pass
        return False

    def head(self, key: str) -> ObjectInfo | None:
        try:
            meta = obstore.head(self._store, key)
        except NOT_FOUND:
            return None
        except FAILED as exc:
            raise self._failed(exc, f"read {key}") from None
        return ObjectInfo(key, int(meta["size"]), meta.get("e_tag"))

    def read(self, key: str) -> tuple[bytes, str] | None:
        try:
            result = obstore.get(self._store, key)
            data = bytes(result.bytes())
        except NOT_FOUND:
            return None
        except FAILED as exc:
            raise self._failed(exc, f"read {key}") from None
        return data, str(result.meta.get("e_tag"))

    @contextlib.contextmanager
    def reader(self, key: str) -> Iterator[StreamReader]:
        try:
            chunks = obstore.get(self._store, key).stream(min_chunk_size=READ_CHUNK)
        except NOT_FOUND:
            raise IngestError(f"{self.where(key)} disappeared before it was read") from None
        except FAILED as exc:
            raise self._failed(exc, f"read {key}") from None
        yield StreamReader(chunks, self.where(key), lambda exc: self._failed(exc, f"read {key}"))

    def listing(self, prefix: str) -> Iterator[ObjectInfo]:
        try:
            for batch in obstore.list(self._store, prefix):
                for meta in batch:
                    yield ObjectInfo(str(meta["path"]), int(meta["size"]), meta.get("e_tag"))
        except NOT_FOUND:
            return
        except FAILED as exc:
            raise self._failed(exc, "list") from None

    # writes

    def write(self, key: str, data: bytes, *, expected: str | None) -> str:
        """Put `data` only if `key` is still at version `expected` (None: still absent)."""
        mode: Any = "create" if expected is None else {"e_tag": expected}
        try:
            result = obstore.put(self._store, key, data, mode=mode)
        except (AlreadyExistsError, PreconditionError):
            raise ConflictError(key) from None
        except FAILED as exc:
            raise self._failed(exc, f"write {key}") from None
        return str(result["e_tag"])

    def put(self, key: str, data: bytes) -> None:
        try:
            obstore.put(self._store, key, data)
        except FAILED as exc:
            raise self._failed(exc, f"write {key}") from None

    def delete(self, key: str) -> None:
        with contextlib.suppress(*NOT_FOUND):
            obstore.delete(self._store, key)

    def check_writable(self, keys: list[str]) -> None:
        """A small write and delete beside the first key, before anything is paid for."""
        folder = posixpath.dirname(keys[0]) if keys else ""
        probe = posixpath.join(folder, f".write-probe-{uuid.uuid4().hex}")
        self.write(probe, b"probe", expected=None)
        self.delete(probe)

    def publish(self, temp: Path, key: str) -> None:
        """Upload a finished file: the object appears whole or not at all.

        One PUT up to PART_SIZE, else a multipart upload in constant memory, aborted on any
        failure (or a signal, which arrives between parts). Refused once a lease was lost.
        """
        if self._leases.lost.is_set():
            raise IngestError(
                f"lost the lease on {self.where(key)} to another run: nothing published; "
                "run the same command again"
            )
        try:
            with (
                temp.open("rb") as source,
                obstore.open_writer(
                    self._store, key, buffer_size=PART_SIZE, max_concurrency=UPLOAD_PARTS
                ) as sink,
            ):
                while block := source.read(PART_SIZE):
                    sink.write(block)
        except FAILED as exc:
            raise self._failed(exc, f"upload {key}") from None
        temp.unlink(missing_ok=True)

    def locked(
        self, locks: list[LockRequest], timeout_s: float
    ) -> contextlib.AbstractContextManager[None]:
        """Leases on the keys, over this store's conditional writes."""
        return self._leases.held(locks, timeout_s)

    def _failed(self, exc: BaseException, action: str) -> IngestError:
        """One line for a storage error, from obstore's error type (credentials never appear in
        obstore's messages; its text is shown only for errors without a type of their own)."""
        if isinstance(exc, NOT_FOUND):
            cause = "not found"
            hint = f"does the bucket {self.bucket} exist at this endpoint (AWS_ENDPOINT_URL)?"
        elif isinstance(exc, PermissionDeniedError):
            cause, hint = "access denied", "check the AWS credentials and the bucket's permissions"
        elif isinstance(exc, UnauthenticatedError):
            cause, hint = "not authenticated", "check the AWS credentials (AWS_PROFILE, keys)"
        else:
            cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            hint = "check AWS_ENDPOINT_URL, the network and the bucket"
        return IngestError(f"cannot {action} in {self.url} ({cause}): {hint}")


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
            except FAILED as exc:
                raise self._failed(exc) from None
            if chunk is None:
                break
            self._buffer += bytes(chunk)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data
