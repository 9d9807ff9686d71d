"""A finished batch job's files as `batch.list_files` describes them (the documented schema)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORT_SUFFIX = ".json"  # metadata.json, symbology.json, condition.json, manifest.json
HEX_DIGITS = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class JobFile:
    """One file of a finished job, as `batch.list_files` describes it.

    Only `filename` and `size` are required by the published schema; `hash` and `urls` are
    nullable. `sha256` is None when the service gives no sha256 (null, absent, or another
    algorithm, which the SDK skips too): the file is then checked by its DBN content alone.
    `url` is None when it gives no https URL: the SDK cannot fetch such a file either ("'download'
    delivery is not available"), and we do not guess a path on the gateway for it, so its
    download fails with a message naming the file (client.files).
    """

    filename: str
    size: int
    sha256: str | None
    url: str | None

    @property
    def is_data(self) -> bool:
        """Support files (JSON) describe the job; every other file must be a DBN stream of it.

        Only the kind is read from the name: what a data file holds, and its place in the
        year, come from its own DBN metadata.
        """
        return not self.filename.endswith(SUPPORT_SUFFIX)

    @classmethod
    def parse(cls, raw: Any) -> JobFile:
        name = str(raw["filename"])
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"unsafe file name {name!r}")
        size = int(raw["size"])
        if size < 0:
            raise ValueError(f"negative size {size} of {name}")
        urls = raw.get("urls") or {}
        if not isinstance(urls, dict):
            raise TypeError(f"urls of {name} is not an object: {urls!r}")
        url = urls.get("https")
        return cls(name, size, _sha256_of(raw.get("hash")), str(url) if url else None)


def _sha256_of(value: Any) -> str | None:
    """The hex digest of a `sha256:<hex>` hash; None for no hash or another algorithm."""
    if value is None:
        return None
    algorithm, _, digest = str(value).partition(":")
    if algorithm.lower() != "sha256":
        return None
    if len(digest) != 64 or any(char not in HEX_DIGITS for char in digest.lower()):
        raise ValueError(f"malformed sha256 {value!r}")
    return digest.lower()
