"""A local HTTPS stand-in of the Databento historical API (the "sandbox gateway").

Tests, demos and benchmarks use it; product code never imports it.
"""

from backend.sandbox.faults import Fault
from backend.sandbox.gateway import RecordedRequest, SandboxGateway
from backend.sandbox.records import (
    MBP1_DTYPE,
    RECORD_DTYPES,
    TRADE_DTYPE,
    day_record_bytes,
    expected_records,
    generate_day,
)

__all__ = [
    "MBP1_DTYPE",
    "RECORD_DTYPES",
    "TRADE_DTYPE",
    "Fault",
    "RecordedRequest",
    "SandboxGateway",
    "day_record_bytes",
    "expected_records",
    "generate_day",
]
