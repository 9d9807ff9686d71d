"""Logging set-up, called once by the CLI (and safely again by tests).

Everything goes to stdout through loguru: our lines, the SDK's stdlib logging and the
`X-Warning` warnings the SDK raises. `diagnose=False` keeps variable values (the API key)
out of tracebacks, and a patcher masks the key should any message ever contain it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from loguru import logger

TEXT_FORMAT = "<green>{time:YYYY-MM-DD HH:mm:ss}</green> | <level>{level: <7}</level> | {message}"
# Per-product completion lines use SUCCESS, so --quiet (level SUCCESS) still shows them.
COMPLETION_LEVEL = "SUCCESS"


class InterceptHandler(logging.Handler):
    """Routes stdlib logging records (the databento SDK's) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).log(level, "{}", record.getMessage())


def _text_sink(stream: str) -> Any:
    def write(message: Any) -> None:
        # Looked up at write time so test runners that swap sys.stdout/stderr capture it.
        out = getattr(sys, stream)
        out.write(message)
        out.flush()

    return write


def _json_sink(stream: str) -> Any:
    def write(message: Any) -> None:
        record = message.record
        line = {
            "time": record["time"].isoformat(),
            "level": record["level"].name,
            "message": record["message"],
            **record["extra"],
        }
        out = getattr(sys, stream)
        out.write(json.dumps(line, default=str) + "\n")
        out.flush()

    return write


def secret_pattern(secrets: list[str]) -> re.Pattern[str] | None:
    """Each secret in any case, and as the base64 of an HTTP Basic header (`key:`)."""
    forms = set()
    for secret in secrets:
        forms.add(secret)
        for credentials in (f"{secret}:", secret):
            forms.add(base64.b64encode(credentials.encode()).decode().rstrip("="))
    if not forms:
        return None
    alternatives = sorted(forms, key=len, reverse=True)
    return re.compile("|".join(re.escape(form) for form in alternatives), re.IGNORECASE)


def _masker(secrets: list[str]) -> Any:
    pattern = secret_pattern(secrets)

    def patch(record: Any) -> None:
        if pattern is not None:
            record["message"] = pattern.sub("***", record["message"])

    return patch


def _log_warning(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
    logger.warning("{}: {}", category.__name__, message)


def setup_logging(
    level: str = "INFO", *, json_lines: bool = False, secrets: list[str] | None = None
) -> None:
    """Logs to stdout, errors to stderr; text or JSON lines. Safe to call more than once."""
    logger.remove()
    logger.configure(patcher=_masker([s for s in secrets or [] if s]), extra={})
    make_sink = _json_sink if json_lines else _text_sink
    text_options = {} if json_lines else {"format": TEXT_FORMAT, "colorize": _colors()}
    error_no = logger.level("ERROR").no
    logger.add(
        make_sink("stdout"),
        level=level,
        filter=lambda record: record["level"].no < error_no,
        diagnose=False,
        backtrace=False,
        **text_options,
    )
    logger.add(make_sink("stderr"), level="ERROR", diagnose=False, backtrace=False, **text_options)
    # The SDK's own INFO lines ("Initialized Historical(...)") are noise unless debugging.
    sdk_level = logging.DEBUG if level in {"TRACE", "DEBUG"} else logging.WARNING
    logging.basicConfig(handlers=[InterceptHandler()], level=sdk_level, force=True)


@contextlib.contextmanager
def warnings_logged() -> Iterator[None]:
    """Log every warning (the SDK's X-Warning degraded-day notices among them) while inside."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _log_warning
        yield


def _colors() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def key_value_line(event: str | None = None, level: str = "INFO", **fields: Any) -> None:
    """`[event ]key=value ...` in text logs; the same fields as JSON keys with --log-json."""
    text = " ".join(f"{key}={_logfmt(value)}" for key, value in fields.items())
    extra = {"event": event, **fields} if event else fields
    logger.bind(**extra).log(level, f"{event} {text}" if event else text)


def completion_line(**fields: Any) -> None:
    """The one line that ends each product; SUCCESS level so --quiet keeps it."""
    key_value_line(level=COMPLETION_LEVEL, **fields)


def _logfmt(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if " " in text or '"' in text else text
