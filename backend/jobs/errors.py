"""One exception hierarchy; the CLI maps each class to its documented exit code."""

from __future__ import annotations

import errno
from collections.abc import Iterable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID_INPUT = 2
EXIT_CREDENTIALS = 3
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); SIGTERM and SIGHUP exit 128 + the signal number
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# A run that ended several ways exits with the first of these it has, for automation:
# credentials (nothing works until they are fixed), then a failure (run the same command again;
# a retry loop must not stop on it), then input to fix (unknown symbol, year without data).
EXIT_PRECEDENCE = (EXIT_CREDENTIALS, EXIT_FAILED, EXIT_INVALID_INPUT)


def combined_exit_code(codes: Iterable[int]) -> int:
    """Pure: the exit code of a run whose parts ended with `codes` (0 when none failed)."""
    present = set(codes) - {EXIT_OK}
    ranked = [code for code in EXIT_PRECEDENCE if code in present]
    return ranked[0] if ranked else max(present, default=EXIT_OK)


class IngestError(Exception):
    """Ingestion failed (server error, network, disk): exit 1."""

    exit_code = EXIT_FAILED


class InvalidInputError(IngestError):
    """Malformed flags or environment, or a request the dataset cannot answer: exit 2."""

    exit_code = EXIT_INVALID_INPUT


class BudgetExceededError(InvalidInputError):
    """The estimated cost of what would be downloaded exceeds --max-cost: exit 2."""


class CredentialsError(IngestError):
    """The API key is missing or the server rejected it: exit 3."""

    exit_code = EXIT_CREDENTIALS


class TransientError(IngestError):
    """A failure worth retrying: connection drop, cut stream, 408/429/5xx."""

    def __init__(
        self, message: str, retry_after: float | None = None, *, rate_limited: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited  # a 429: the whole run slows down


class NoDataError(InvalidInputError):
    """The service says there is nothing to resolve in a range (a 422 for a chunk with no data)."""


class RunStoppedError(IngestError):
    """Work stopped because the run is ending (a signal, or another chunk failed)."""


class StopRequestedError(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C, then exits with 128 + the signal number."""

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = exit_code


class JobGoneError(IngestError):
    """A batch job Databento no longer has (expired 30 days after submit, or unknown)."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class CorruptFileError(IngestError):
    """A DBN file that is truncated, undecodable or does not match what was asked for."""


class DiskFullError(IngestError):
    """The cache's disk (or quota) is full."""


class NotCachedError(IngestError):
    """A symbol-year-product the cache does not hold (no file, or no manifest entry for it):
    exit 1. `command` is the one that fetches it."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.command = command


class IntegrityError(IngestError):
    """A cached file that does not hash to its manifest entry's sha256, or does not decode:
    exit 1. Names the file and both hashes."""

    def __init__(self, message: str, *, path: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.actual = actual
