"""Where the cache lives, as the user wrote it: a local folder or `s3://BUCKET/PREFIX`.

An `s3://` URL is parsed strictly before any request (a typo is named as such rather than
coming back from the server as NoSuchBucket); a URL is only ever shown with its credentials
masked. `StoreLocation` carries the location as plain values: `store.open_store` opens it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from backend.jobs.errors import InvalidInputError

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


@dataclass(frozen=True)
class StoreLocation:
    """A data dir as plain values (no credentials: the AWS configuration holds those)."""

    url: str  # a local folder, or s3://bucket/prefix
    source: str = "--data-dir"  # where it was given (or DATA_DIR), for messages
    allow_http: bool = False  # AWS_ENDPOINT_URL is plain http (a local S3 server)
    aws_profile: bool = False  # S3 credentials come from ~/.aws profiles


def looks_like_url(text: str) -> bool:
    """`scheme://…`, or `s3:` with a slash missing (`s3:/bucket`, `s3:bucket`): never a folder."""
    return "://" in text or text[:3].lower() == "s3:"


def s3_location(url: str, source: str) -> tuple[str, str]:
    """(bucket, prefix) of a data dir given as a URL; any scheme but s3:// is refused."""
    if not url.lower().startswith(S3_SCHEME):
        raise InvalidInputError(
            f"{source} {redact_url(url)!r} is neither a local folder nor s3://BUCKET/PREFIX (the "
            "only object store this tool writes to): write s3://BUCKET/PREFIX or a folder"
        )
    return split_url(url, source)


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
