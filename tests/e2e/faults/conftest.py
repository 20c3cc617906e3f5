"""Fixtures of the fault suite; every record is written to the JSON report at the session's end
and shown as a table in the terminal summary.

The fault suite is the long run of the tests (about 12 minutes on a 2-core machine: 60 s outages,
a 3-node RabbitMQ cluster, Sentinel failovers, SIGKILLed hosts). It runs when ``TK_LONG=1``;
``scripts/test`` sets that under ``CI=true``, so CI always runs it. Elsewhere its tests are
reported as skipped, with the reason, never as passed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.faults.hygiene import SecretScan
from tests.e2e.faults.report import REPORT_PATH, FaultRecord, render, write_records

_RECORDS: list[FaultRecord] = []
_HERE = Path(__file__).resolve().parent
LONG = os.environ.get("TK_LONG", "").lower() in ("1", "true", "yes")
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if LONG:
        return
    skip = pytest.mark.skip(reason="the fault suite is a long run: TK_LONG=1 runs it (CI does)")
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _RECORDS:
        write_records(_RECORDS, REPORT_PATH, scans=_SCANS)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RECORDS:
        return
    terminalreporter.section("fault suite")
    terminalreporter.write_line(render([r.to_dict() for r in _RECORDS]))
    terminalreporter.write_line(f"report: {Path(REPORT_PATH)}")
