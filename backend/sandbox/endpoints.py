"""The API's endpoints: parameter validation, symbology, counts, the get_range body, batch."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from backend.sandbox import batchapi, errors
from backend.sandbox.bodies import RangeQuery, matching_fixture, range_body
from backend.sandbox.catalog import (
    ALL_SCHEMAS,
    ALL_STYPES,
    ALL_SYMBOLS,
    COMPRESSIONS,
    DATA_SCHEMAS,
    DATASETS,
    ENCODINGS,
    day_conditions,
    resolve_answer,
)
from backend.sandbox.records import count_records, iter_session_days
from backend.sandbox.responses import JsonResponse, Response, StreamResponse
from backend.sandbox.timestamps import (
    NS_PER_DAY,
    ceil_date,
    date_to_ns,
    format_human_ns,
    format_iso_ns,
    ns_to_date,
    parse_timestamp,
)

if TYPE_CHECKING:
    from backend.sandbox.gateway import SandboxGateway


_TRUE_WORDS = ("true", "1", "yes", "on", "t", "y")
_FALSE_WORDS = ("false", "0", "no", "off", "f", "n")


@dataclass(frozen=True)
class ApiCall:
    method: str
    params: dict[str, str]
    key: str | None
    # The request's Range header ("" without one): batch file downloads resume with it.
    range_header: str = ""

    @property
    def location(self) -> str:
        """Where FastAPI says a bad field was: the query string (GET) or the form body (POST)."""
        return "query" if self.method == "GET" else "body"

    def optional(self, name: str) -> str | None:
        value = self.params.get(name)
        return value if value not in (None, "") else None

    def choice(self, name: str, allowed: tuple[str, ...], default: str | None = None) -> str:
        value = self.optional(name) or default
        if value is None:
            raise errors.missing_error(self.location, name)
        if value not in allowed:
            raise errors.enum_error(self.location, name, value, allowed)
        return value

    def dataset(self) -> str:
        return self.choice("dataset", tuple(DATASETS))

    def timestamp(self, name: str) -> tuple[int, int] | None:
        """(ns, resolution_ns) of an optional timestamp field."""
        value = self.optional(name)
        if value is None:
            return None
        try:
            parsed = parse_timestamp(value)
        except ValueError:
            raise errors.validation_error(
                self.location, name, f"Invalid datetime {value!r}", "datetime_parsing", value
            ) from None
        return parsed.ns, parsed.resolution_ns

    def date(self, name: str) -> date | None:
        parsed = self.timestamp(name)
        return None if parsed is None else ns_to_date(parsed[0])

    def positive_int(self, name: str) -> int | None:
        value = self.optional(name)
        if value is None:
            return None
        try:
            number = int(value)
        except ValueError:
            raise errors.validation_error(
                self.location,
                name,
                "Input should be a valid integer, unable to parse string as an integer",
                "int_parsing",
                value,
            ) from None
        if number <= 0:
            raise errors.validation_error(
                self.location, name, "Input should be greater than 0", "greater_than", value
            )
        return number

    def boolean(self, name: str, default: bool) -> bool:
        """A form/query boolean the way FastAPI reads it (the SDK sends `True`/`False`)."""
        value = self.optional(name)
        if value is None:
            return default
        if value.lower() in _TRUE_WORDS:
            return True
        if value.lower() in _FALSE_WORDS:
            return False
        raise errors.validation_error(
            self.location,
            name,
            "Input should be a valid boolean, unable to interpret input",
            "bool_parsing",
            value,
        )

    def symbols(self) -> list[str]:
        text = self.optional("symbols") or ALL_SYMBOLS
        symbols = [symbol.strip() for symbol in text.split(",") if symbol.strip()]
        return symbols or [ALL_SYMBOLS]


def _range_payload(gw: SandboxGateway, dataset: str, start_ns: int, end_ns: int) -> dict:
    available_start, available_end = gw.dataset_range_ns(dataset)
    return {
        "dataset": dataset,
        "start": format_iso_ns(start_ns),
        "end": format_iso_ns(end_ns),
        "available_start": format_iso_ns(available_start),
        "available_end": format_iso_ns(available_end),
    }


def _check_time_range(
    gw: SandboxGateway,
    dataset: str,
    start_ns: int,
    end_ns: int,
    *,
    fields: tuple[str, str] = ("start", "end"),
) -> None:
    """The real server's 422 range cases, in the order it reports them.

    `fields` names the request's start and end parameters in the messages (symbology.resolve
    says `start_date`/`end_date`); the payload keeps the same keys for every endpoint.
    """
    start_field, end_field = fields
    available_start, available_end = gw.dataset_range_ns(dataset)
    if start_ns >= end_ns:
        raise errors.business_error(
            422,
            "data_time_range_start_on_or_after_end",
            f"Invalid time range query, `{start_field}` {format_human_ns(start_ns)} cannot be on "
            f"or after `{end_field}` {format_human_ns(end_ns)}.",
            docs=errors.DOCS_TIME_RANGE,
            payload={"start": format_iso_ns(start_ns), "end": format_iso_ns(end_ns)},
        )
    payload = _range_payload(gw, dataset, start_ns, end_ns)
    if start_ns < available_start:
        raise errors.business_error(
            422,
            "data_start_before_available_start",
            f"`{start_field}` in query ('{format_human_ns(start_ns)}') was before the available "
            f"start of dataset {dataset} ('{format_human_ns(available_start)}'). "
            f"Try requesting with a later `{start_field}`.",
            docs=errors.DOCS_DATASETS,
            payload=payload,
        )
    if start_ns >= available_end:
        raise errors.business_error(
            422,
            "data_start_after_available_end",
            f"`{start_field}` in query ('{format_human_ns(start_ns)}') was after the available "
            f"end of dataset {dataset} ('{format_human_ns(available_end)}'). "
            f"Try requesting with an earlier `{start_field}`.",
            docs=errors.DOCS_DATASETS,
            payload=payload,
        )
    if end_ns > available_end:
        raise errors.business_error(
            422,
            "data_end_after_available_end",
            f"The dataset {dataset} has data available up to '{format_human_ns(available_end)}'. "
            f"The `{end_field}` in the query ('{format_human_ns(end_ns)}') is after the "
            f"available range. Try requesting with an earlier `{end_field}`.",
            docs=errors.DOCS_DATASETS,
            payload=payload,
        )


def _check_supported(schema: str, stype_in: str, stype_out: str) -> None:
    if schema not in DATA_SCHEMAS:
        raise errors.business_error(
            422,
            "sandbox_schema_unsupported",
            f"The sandbox gateway only has data for schemas {', '.join(DATA_SCHEMAS)}; "
            f"`{schema}` is not served.",
            docs=errors.DOCS_SCHEMAS,
            payload={"schema": schema},
        )
    if stype_in != "raw_symbol" or stype_out != "instrument_id":
        raise errors.business_error(
            422,
            "sandbox_stype_unsupported",
            "The sandbox gateway only resolves `raw_symbol` to `instrument_id`; "
            f"got `{stype_in}` -> `{stype_out}`.",
            docs=errors.DOCS_SYMBOLOGY,
            payload={"stype_in": stype_in, "stype_out": stype_out},
        )


def parse_range_query(gw: SandboxGateway, call: ApiCall) -> RangeQuery:
    dataset = call.dataset()
    start = call.timestamp("start")
    if start is None:
        raise errors.missing_error(call.location, "start")
    end = call.timestamp("end")
    schema = call.choice("schema", ALL_SCHEMAS, default="trades")
    stype_in = call.choice("stype_in", ALL_STYPES, default="raw_symbol")
    stype_out = call.choice("stype_out", ALL_STYPES, default="instrument_id")
    limit = call.positive_int("limit")
    symbols = call.symbols()

    _check_supported(schema, stype_in, stype_out)
    start_ns, start_resolution = start
    # An omitted `end` is `start` forward-filled to the resolution it was written with.
    end_ns = end[0] if end is not None else start_ns + start_resolution
    _check_time_range(gw, dataset, start_ns, end_ns)

    resolution = gw.catalog.resolve(dataset, symbols, ns_to_date(start_ns), ceil_date(end_ns))
    unresolved = not resolution.mappings
    if not unresolved and gw.no_session_answer == "422":
        # Like a real feed with no definitions outside sessions: nothing resolves on those days.
        sessions = iter_session_days(resolution.mappings, start_ns=start_ns, end_ns=end_ns)
        unresolved = next(sessions, None) is None
    if unresolved:
        raise errors.business_error(
            422,
            "symbology_invalid_request",
            "None of the symbols could be resolved",
            docs=errors.DOCS_SYMBOLOGY,
            payload={
                "dataset": dataset,
                "symbols": symbols,
                "stype_in": stype_in,
                "stype_out": stype_out,
                "start": format_iso_ns(start_ns),
                "end": format_iso_ns(end_ns),
            },
        )
    return RangeQuery(dataset, schema, symbols, start_ns, end_ns, limit, resolution)


def _record_count(gw: SandboxGateway, query: RangeQuery) -> int:
    fixture = matching_fixture(gw.fixtures, query)
    if fixture is not None:
        total = fixture.record_count
    else:
        total = sum(
            count_records(
                query.dataset,
                symbol,
                intervals,
                start_ns=query.start_ns,
                end_ns=query.end_ns,
                records_per_day=gw.records_per_day,
            )
            for symbol, intervals in query.resolution.mappings.items()
        )
    return total if query.limit is None else min(total, query.limit)


def _degraded_warning(gw: SandboxGateway, start_ns: int, end_ns: int) -> dict[str, str]:
    first, last = ns_to_date(start_ns), ceil_date(end_ns)
    days = sorted(day for day in gw.degraded_days if first <= day < last)
    if not days:
        return {}
    listed = ", ".join(f"{day.isoformat()} (degraded)" for day in days)
    warning = (
        "Warning: The streaming request contained one or more days which have reduced quality: "
        + listed
    )
    return {"X-Warning": json.dumps([warning])}


def get_range(gw: SandboxGateway, call: ApiCall) -> Response:
    query = parse_range_query(gw, call)
    encoding = call.choice("encoding", ENCODINGS, default="csv")
    compression = call.choice("compression", COMPRESSIONS, default="none")
    if encoding != "dbn":
        raise errors.encoding_unsupported(encoding)
    headers = {"Content-Type": "application/octet-stream"}
    headers.update(_degraded_warning(gw, query.start_ns, query.end_ns))
    body = range_body(gw.body_settings(), query, "zstd" if compression == "zstd" else "none")
    return StreamResponse(body, headers=headers)


def get_record_count(gw: SandboxGateway, call: ApiCall) -> Response:
    return JsonResponse(_record_count(gw, parse_range_query(gw, call)))


def get_billable_size(gw: SandboxGateway, call: ApiCall) -> Response:
    query = parse_range_query(gw, call)
    return JsonResponse(_record_count(gw, query) * query.record_size)


def _cost_usd(gw: SandboxGateway, record_count: int, query: RangeQuery) -> float:
    return record_count * query.record_size / 1e9 * gw.price_per_gb


def get_cost(gw: SandboxGateway, call: ApiCall) -> Response:
    query = parse_range_query(gw, call)
    cost = _cost_usd(gw, _record_count(gw, query), query)
    return JsonResponse(cost, headers=_degraded_warning(gw, query.start_ns, query.end_ns))


def get_dataset_range(gw: SandboxGateway, call: ApiCall) -> Response:
    dataset = call.dataset()
    start_ns, end_ns = gw.dataset_range_ns(dataset)
    span = {"start": format_iso_ns(start_ns), "end": format_iso_ns(end_ns)}
    return JsonResponse(
        {**span, "schema": {schema: dict(span) for schema in DATASETS[dataset].schemas}}
    )


def list_datasets(gw: SandboxGateway, call: ApiCall) -> Response:
    start_date, end_date = call.date("start_date"), call.date("end_date")
    listed = []
    for dataset in sorted(DATASETS):
        available_start, available_end = gw.dataset_range_ns(dataset)
        if end_date is not None and date_to_ns(end_date) <= available_start:
            continue
        if start_date is not None and date_to_ns(start_date) >= available_end:
            continue
        listed.append(dataset)
    return JsonResponse(listed)


def list_schemas(_gw: SandboxGateway, call: ApiCall) -> Response:
    return JsonResponse(list(DATASETS[call.dataset()].schemas))


def get_dataset_condition(gw: SandboxGateway, call: ApiCall) -> Response:
    dataset = call.dataset()
    available_start, available_end = gw.dataset_range_ns(dataset)
    first = call.date("start_date") or ns_to_date(available_start)
    # end_date is inclusive here, defaulting to the last available day.
    last = call.date("end_date") or ns_to_date(available_end - NS_PER_DAY)
    first = max(first, ns_to_date(available_start))
    end = min(last + timedelta(days=1), ceil_date(available_end))
    return JsonResponse(day_conditions(first, end, gw.degraded_days))


def symbology_resolve(gw: SandboxGateway, call: ApiCall) -> Response:
    dataset = call.dataset()
    symbols = call.symbols()
    stype_in = call.choice("stype_in", ALL_STYPES)
    stype_out = call.choice("stype_out", ALL_STYPES)
    start_date = call.date("start_date")
    if start_date is None:
        raise errors.missing_error(call.location, "start_date")
    end_date = call.date("end_date") or start_date + timedelta(days=1)
    _check_supported("trades", stype_in, stype_out)
    if start_date >= end_date:
        raise errors.business_error(
            422,
            "data_time_range_start_on_or_after_end",
            f"Invalid time range query, `start_date` {start_date} cannot be on or after "
            f"`end_date` {end_date}.",
            docs=errors.DOCS_TIME_RANGE,
            payload={"start_date": start_date.isoformat(), "end_date": end_date.isoformat()},
        )
    # end_date is exclusive: the request reaches its midnight, which must be available.
    _check_time_range(
        gw,
        dataset,
        date_to_ns(start_date),
        date_to_ns(end_date),
        fields=("start_date", "end_date"),
    )
    resolution = gw.catalog.resolve(dataset, symbols, start_date, end_date)
    return JsonResponse(
        resolve_answer(
            resolution,
            symbols=symbols,
            stype_in=stype_in,
            stype_out=stype_out,
            start_date=start_date,
            end_date=end_date,
        )
    )


def batch_submit_job(gw: SandboxGateway, call: ApiCall) -> Response:
    """Validated like get_range, billed like get_cost, then handed to the batch jobs."""
    query = parse_range_query(gw, call)
    record_count = _record_count(gw, query)
    return batchapi.submit_job(gw, call, query, record_count, _cost_usd(gw, record_count, query))


Handler = Callable[["SandboxGateway", ApiCall], Response]

ROUTES: dict[str, tuple[tuple[str, ...], Handler]] = {
    "timeseries.get_range": (("GET", "POST"), get_range),
    "metadata.get_record_count": (("GET", "POST"), get_record_count),
    "metadata.get_billable_size": (("GET", "POST"), get_billable_size),
    "metadata.get_cost": (("GET", "POST"), get_cost),
    "metadata.get_dataset_range": (("GET",), get_dataset_range),
    "metadata.get_dataset_condition": (("GET",), get_dataset_condition),
    "metadata.list_datasets": (("GET",), list_datasets),
    "metadata.list_schemas": (("GET",), list_schemas),
    "symbology.resolve": (("GET", "POST"), symbology_resolve),
    "batch.submit_job": (("POST",), batch_submit_job),
    "batch.get_job_details": (("GET",), batchapi.get_job_details),
    "batch.list_jobs": (("GET",), batchapi.list_jobs),
    "batch.list_files": (("GET",), batchapi.list_files),
    "batch.download": (("GET",), batchapi.download_job),
    batchapi.FILE_ENDPOINT: (("GET",), batchapi.download_file),
}


def dispatch(gw: SandboxGateway, endpoint: str, call: ApiCall) -> Response:
    """Route, authenticate, then run the endpoint; errors come back as ApiError."""
    route = ROUTES.get(endpoint)
    if route is None:
        raise errors.not_found()
    methods, handler = route
    if call.method not in methods:
        raise errors.method_not_allowed(methods)
    if call.key is None:
        raise errors.not_authenticated()
    if not gw.accepts_key(call.key):
        raise errors.authentication_failed()
    return handler(gw, call)
