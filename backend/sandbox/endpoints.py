"""The API's endpoints: parameter validation, symbology, counts and the get_range body."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from backend.sandbox import errors
from backend.sandbox.catalog import (
    ALL_SCHEMAS,
    ALL_STYPES,
    ALL_SYMBOLS,
    DATA_SCHEMAS,
    DATASETS,
    RECORD_SIZE,
    Resolution,
)
from backend.sandbox.dbnstream import encode_body, encode_cached_days, encode_metadata
from backend.sandbox.fixtures import Fixture, fixture_key
from backend.sandbox.records import (
    count_records,
    iter_range_days,
    iter_range_records,
    iter_session_days,
)
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

ENCODINGS = ("dbn", "csv", "json")
COMPRESSIONS = ("none", "zstd")


@dataclass
class JsonResponse:
    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamResponse:
    chunks: Iterator[bytes]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


Response = JsonResponse | StreamResponse


@dataclass(frozen=True)
class ApiCall:
    method: str
    params: dict[str, str]
    key: str | None

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

    def symbols(self) -> list[str]:
        text = self.optional("symbols") or ALL_SYMBOLS
        symbols = [symbol.strip() for symbol in text.split(",") if symbol.strip()]
        return symbols or [ALL_SYMBOLS]


@dataclass(frozen=True)
class RangeQuery:
    """A validated timeseries/metadata query for one dataset, schema and symbol list."""

    dataset: str
    schema: str
    symbols: list[str]
    start_ns: int
    end_ns: int
    limit: int | None
    resolution: Resolution

    @property
    def record_size(self) -> int:
        return RECORD_SIZE[self.schema]


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


def _matching_fixture(gw: SandboxGateway, query: RangeQuery) -> Fixture | None:
    key = fixture_key(query.dataset, query.schema, query.symbols, query.start_ns, query.end_ns)
    return gw.fixtures.get(key)


def _record_count(gw: SandboxGateway, query: RangeQuery) -> int:
    fixture = _matching_fixture(gw, query)
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
        raise errors.business_error(
            400,
            "sandbox_encoding_unsupported",
            f"The sandbox gateway only streams `dbn` encoding; got `{encoding}`.",
            payload={"encoding": encoding},
        )
    headers = {"Content-Type": "application/octet-stream"}
    headers.update(_degraded_warning(gw, query.start_ns, query.end_ns))
    fixture = _matching_fixture(gw, query)
    if fixture is not None:
        body = fixture.body if compression == "zstd" else fixture.decompressed()
        return StreamResponse(iter([body]), headers=headers)

    resolution = query.resolution
    metadata = encode_metadata(
        dataset=query.dataset,
        schema=query.schema,
        start_ns=query.start_ns,
        end_ns=query.end_ns,
        limit=query.limit,
        symbols=query.symbols,
        partial=resolution.partial,
        not_found=resolution.not_found,
        mappings=resolution.mappings,
    )
    selection = (query.dataset, query.schema, resolution.mappings)
    window = {
        "start_ns": query.start_ns,
        "end_ns": query.end_ns,
        "records_per_day": gw.records_per_day,
    }
    cacheable = gw.frames == "per_day" and query.limit is None and compression == "zstd"
    if gw.frame_cache is not None and cacheable:
        days = iter_range_days(*selection, **window)
        body = encode_cached_days(metadata, days, gw.frame_cache, gw.compression_level)
        return StreamResponse(body, headers=headers)
    records = iter_range_records(*selection, **window, limit=query.limit)
    body = encode_body(
        metadata,
        records,
        compression="zstd" if compression == "zstd" else "none",
        frames=gw.frames,
        level=gw.compression_level,
    )
    return StreamResponse(body, headers=headers)


def get_record_count(gw: SandboxGateway, call: ApiCall) -> Response:
    return JsonResponse(_record_count(gw, parse_range_query(gw, call)))


def get_billable_size(gw: SandboxGateway, call: ApiCall) -> Response:
    query = parse_range_query(gw, call)
    return JsonResponse(_record_count(gw, query) * query.record_size)


def get_cost(gw: SandboxGateway, call: ApiCall) -> Response:
    query = parse_range_query(gw, call)
    billable = _record_count(gw, query) * query.record_size
    cost = billable / 1e9 * gw.price_per_gb
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
    conditions = []
    day = max(first, ns_to_date(available_start))
    while day <= last and date_to_ns(day) < available_end:
        condition = "degraded" if day in gw.degraded_days else "available"
        conditions.append(
            {"date": day.isoformat(), "condition": condition, "last_modified_date": day.isoformat()}
        )
        day += timedelta(days=1)
    return JsonResponse(conditions)


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
    if not resolution.mappings:
        status, message = 2, "Not found"
    elif resolution.partial or resolution.not_found:
        status, message = 1, "Partially resolved"
    else:
        status, message = 0, "OK"
    result = {
        symbol: [
            {"d0": i.d0.isoformat(), "d1": i.d1.isoformat(), "s": str(i.instrument_id)}
            for i in intervals
        ]
        for symbol, intervals in resolution.mappings.items()
    }
    return JsonResponse(
        {
            "result": result,
            "symbols": symbols,
            "stype_in": stype_in,
            "stype_out": stype_out,
            "start_date": start_date.isoformat(),
            "end_date": end_date.isoformat(),
            "partial": resolution.partial,
            "not_found": resolution.not_found,
            "message": message,
            "status": status,
        }
    )


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
