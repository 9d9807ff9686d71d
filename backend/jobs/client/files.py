"""The ranged fetcher of a batch job's files: one HTTP session, resumed with `Range`.

The SDK's own `batch.download` restarts a file from zero and cannot be stopped midway; this
one continues what an earlier attempt or run left, checks that the server sent the range it
was asked for, stops between blocks when the run ends, and sends the API key only over https
to the gateway's host or Databento's own domain.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from backend.jobs.client.jobfiles import JobFile
from backend.jobs.client.translate import (
    JOB_GONE_STATUSES,
    RETRYABLE_STATUSES,
    http_error,
    translatable,
    translate_error,
)
from backend.jobs.core.secret import Secret
from backend.jobs.errors import (
    CredentialsError,
    IngestError,
    JobGoneError,
    RunStoppedError,
    TransientError,
)

if TYPE_CHECKING:
    import requests

DOWNLOAD_BLOCK = 1 << 16  # a cut answer loses at most the block in flight (urllib3 2)
# Hosts a batch file may be fetched from with the API key, besides the gateway's own.
DOWNLOAD_DOMAIN = "databento.com"
CONNECTIONS = 32  # kept open for reuse: one per concurrent download (--jobs is at most 32)


def new_session() -> requests.Session:
    """A session whose pool keeps a connection for every concurrent download."""
    import requests

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=CONNECTIONS)
    session.mount("https://", adapter)
    return session


class FileFetcher:
    """Fetches job files over one `requests.Session` (given, or made once), from many threads."""

    def __init__(
        self,
        key: Secret,
        gateway_host: str | None,
        *,
        timeout_s: float,
        stop: threading.Event,
        session: requests.Session | None = None,
    ) -> None:
        self._key = key
        self._gateway_host = (gateway_host or "").lower()
        self._timeout = (timeout_s, timeout_s)  # connect, and each read
        self._stop = stop
        self._session = session or new_session()

    def fetch(self, file: JobFile, path: Path, job_id: str) -> None:
        """Fetch one job file into `path`, continuing what an earlier attempt or run left.

        A partial file is resumed with `Range`; an answer that is not the asked range (a
        server ignoring Range) restarts it from zero rather than appending the wrong bytes.
        The caller checks the sha256; a cut answer leaves a valid prefix to resume from.
        """
        import requests

        url = self.checked_url(file, job_id)
        what = f"{file.filename} of batch job {job_id}"
        have = path.stat().st_size if path.exists() else 0
        if have > file.size:
            path.unlink()
            have = 0
        if have == file.size:
            return
        headers = {"Range": f"bytes={have}-{file.size - 1}"} if have else {}
        auth = requests.auth.HTTPBasicAuth(self._key.reveal(), "")
        try:
            with self._session.get(
                url, headers=headers, auth=auth, stream=True, timeout=self._timeout
            ) as response:
                mode = write_mode(response, have, file, what, job_id)
                with path.open(mode) as handle:
                    for block in response.iter_content(DOWNLOAD_BLOCK):
                        if self._stop.is_set():
                            raise RunStoppedError(f"{what}: cancelled")
                        handle.write(block)
        except translatable() as exc:
            raise translate_error(exc, what, self._timeout[1]) from None
        got = path.stat().st_size
        if got != file.size:
            raise TransientError(f"{what}: {got} of {file.size} bytes arrived")

    def checked_url(self, file: JobFile, job_id: str) -> str:
        """The file's https URL, if the key may go there: https on the gateway's host or
        Databento's own domain."""
        if file.url is None:
            raise IngestError(
                f"batch job {job_id} lists {file.filename} without an https URL: Databento "
                "offers no download of it (the SDK cannot fetch it either)"
            )
        parts = urlsplit(file.url)
        host = (parts.hostname or "").lower()
        ours = host == self._gateway_host or host.endswith("." + DOWNLOAD_DOMAIN)
        if parts.scheme != "https" or not host or not ours:
            raise IngestError(
                f"batch file {file.filename} is served from {parts.scheme}://{host}, which is "
                "neither https on the gateway's host nor Databento's: not sending the API key there"
            )
        return file.url


def write_mode(response: Any, have: int, file: JobFile, what: str, job_id: str) -> str:
    """How to write the answer to a (ranged) file request: append, start over, or fail."""
    status = response.status_code
    if status == 206:
        expected = f"bytes {have}-{file.size - 1}/{file.size}"
        if response.headers.get("Content-Range", "").strip() != expected:
            raise TransientError(f"{what}: the server answered another range than asked")
        return "ab"
    if status == 200:
        return "wb"  # the whole file: start over
    if status == 416:
        raise TransientError(f"{what}: the server refused the range; starting over")
    reason = response.text.strip().splitlines()[0][:200] if response.text else ""
    if status in JOB_GONE_STATUSES:
        raise JobGoneError(job_id, f"{what}: HTTP {status} {reason}")
    if status in (401, 403):
        raise CredentialsError(
            f"Databento rejected the API key ({status}) for {what}: check DATABENTO_API_KEY"
        )
    if status in RETRYABLE_STATUSES:
        raise http_error(status, reason, response.headers, what)
    raise IngestError(f"Databento refused {what}: HTTP {status} {reason}")
