"""Fixtures of the fault suite; every record is written to the JSON report at the session's end
and shown as a table in the terminal summary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.faults.hygiene import SecretScan
from tests.e2e.faults.report import REPORT_PATH, FaultRecord, render, write_records

_RECORDS: list[FaultRecord] = []
_SCANS: list[dict[str, int]] = []


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[FaultRecord]:
    """The test's row of the table, kept whether the test passed or not (it is the measurement)."""
    made = FaultRecord(fault=request.node.name, broker="redis", provider="local")
    yield made
    if made.jobs_sent:
        _RECORDS.append(made)


@pytest.fixture
def secret_scan() -> Iterator[SecretScan]:
    """Collects secrets and places to search during a fault test; ``check()`` asserts none."""
    scan = SecretScan()
    yield scan
    if scan.checked:
        _SCANS.append(scan.summary())


@pytest.fixture(autouse=True)
def _redis_present() -> None:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _RECORDS:
        write_records(_RECORDS, REPORT_PATH, scans=_SCANS)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RECORDS:
        return
    terminalreporter.section("fault suite")
    terminalreporter.write_line(render([r.to_dict() for r in _RECORDS]))
    terminalreporter.write_line(f"report: {Path(REPORT_PATH)}")
