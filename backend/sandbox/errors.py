"""Error responses shaped like the real API's FastAPI bodies."""

from __future__ import annotations

from typing import Any

DOCS_API_KEYS = "https://databento.com/docs/portal/api-keys"
DOCS_DATASETS = "https://databento.com/docs/api-reference-historical/basics/datasets"
DOCS_TIME_RANGE = "https://databento.com/docs/standards-and-conventions/common-fields-enums-types"
DOCS_SYMBOLOGY = "https://databento.com/docs/standards-and-conventions/symbology"
DOCS_SCHEMAS = "https://databento.com/docs/schemas-and-data-formats"
DOCS_ERRORS = "https://databento.com/docs/api-reference-historical/basics/errors"


class ApiError(Exception):
    """An HTTP error response: status, JSON body and extra headers."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body
        self.headers = headers or {}


def business_error(
    status: int,
    case: str,
    message: str,
    *,
    docs: str = DOCS_ERRORS,
    payload: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> ApiError:
    """`{"detail": {"case", "message", "status_code", "docs", "payload"}}`."""
    detail = {
        "case": case,
        "message": message,
        "status_code": status,
        "docs": docs,
        "payload": payload,
    }
    return ApiError(status, {"detail": detail}, headers)


def encoding_unsupported(encoding: str) -> ApiError:
    return business_error(
        400,
        "sandbox_encoding_unsupported",
        f"The sandbox gateway only streams `dbn` encoding; got `{encoding}`.",
        payload={"encoding": encoding},
    )


def validation_error(location: str, field: str, message: str, kind: str, value: Any) -> ApiError:
    """FastAPI's 422 request-validation body; `location` is "query" (GET) or "body" (POST form)."""
    item: dict[str, Any] = {"type": kind, "loc": [location, field], "msg": message, "input": value}
    return ApiError(422, {"detail": [item]})


def enum_error(
    location: str, field: str, value: str, allowed: list[str] | tuple[str, ...]
) -> ApiError:
    quoted = [f"'{choice}'" for choice in allowed]
    expected = ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else quoted[0]
    error = validation_error(location, field, f"Input should be {expected}", "enum", value)
    error.body["detail"][0]["ctx"] = {"expected": expected}
    return error


def missing_error(location: str, field: str) -> ApiError:
    return validation_error(location, field, "Field required", "missing", None)


def not_authenticated() -> ApiError:
    return ApiError(401, {"detail": "Not authenticated"}, {"WWW-Authenticate": "Basic"})


def authentication_failed() -> ApiError:
    return business_error(
        401, "auth_authentication_failed", "Authentication failed.", docs=DOCS_API_KEYS
    )


def not_found() -> ApiError:
    return ApiError(404, {"detail": "Not Found"})


def method_not_allowed(allowed: tuple[str, ...]) -> ApiError:
    return ApiError(405, {"detail": "Method Not Allowed"}, {"Allow": ", ".join(allowed)})


_FAULT_CASES: dict[int, tuple[str, str]] = {
    400: ("invalid_request", "The request was invalid."),
    402: (
        "account_insufficient_funds",
        (
            "Insufficient funds in your account to complete this request. "
            "Please add funds or enable pay-as-you-go billing."
        ),
    ),
    403: ("auth_account_locked", "Your account is locked. Please contact support."),
    404: ("not_found", "The requested resource was not found."),
    408: ("request_timeout", "The request transmission timed out."),
    409: ("conflict", "The resource already exists."),
    422: ("unprocessable_request", "The request could not be processed."),
    429: (
        "rate_limit_exceeded",
        "Rate limit exceeded. Retry after the period given in the Retry-After header.",
    ),
    500: (
        "internal_error",
        "Internal Server Error: This is unexpected and has been reported. Please try again later.",
    ),
    502: ("bad_gateway", "The gateway received an invalid response from the backend."),
    503: (
        "gateway_unavailable",
        "The gateway is temporarily unavailable or overloaded. Please try again later.",
    ),
    504: ("gateway_timeout", "The gateway is up but the backend timed out."),
}


def fault_error(
    status: int, detail: dict[str, Any] | str | None, retry_after: str | None
) -> ApiError:
    """The response of an injected fault: a realistic body unless `detail` overrides it."""
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    if detail is not None:
        return ApiError(status, {"detail": detail}, headers)
    case, message = _FAULT_CASES.get(status, ("sandbox_fault", f"Injected fault {status}."))
    return business_error(status, case, message, headers=headers)
