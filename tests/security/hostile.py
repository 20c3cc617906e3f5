"""Shared pieces of the hostile-input tests: the generated-case counter and a JobRunner.

Every hypothesis example calls :func:`count_case` with its category; the session prints the
totals (and writes them to ``$TMPDIR/tenantkeys-hostile-cases.json``), so the number of
generated cases a CI run executed is visible, not inferred from ``max_examples``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tenantkeys.errors import TenantKeysError
from tenantkeys.jobs.deadletters import DeadLetterStore
from tenantkeys.jobs.runner import JobRunner
from tenantkeys.keys.service import KeyService
from tenantkeys.resilience import RetryPolicy

CASES: Counter[str] = Counter()
#: The issue's bar: this many generated hostile cases per full run.
REQUIRED_CASES = 10_000
CASES_PATH = Path(os.environ.get("TMPDIR", "/tmp")) / "tenantkeys-hostile-cases.json"


def count_case(category: str) -> None:
    CASES[category] += 1


def write_cases() -> None:
    CASES_PATH.write_text(
        json.dumps({"total": sum(CASES.values()), "by_category": dict(CASES)}, indent=2) + "\n"
    )


class RecordingDeadLetters:
    """A dead-letter store stand-in that keeps what it was given (bad input must add none)."""

    def __init__(self) -> None:
        self.added: list[dict[str, Any]] = []

    def add(self, **entry: Any) -> Any:
        self.added.append(entry)

        class _Entry:
            id = f"dl{len(self.added)}"

        return _Entry()

    def note_failure(self, job_id: str) -> float:
        return 0.0

    def forget_failures(self, job_id: str) -> None:
        return None


def runner_for(service: KeyService, deadletters: Any = None) -> JobRunner:
    store: DeadLetterStore = deadletters or RecordingDeadLetters()  # type: ignore[assignment]
    return JobRunner(service, store, RetryPolicy(max_retries=3, base_seconds=0.1, cap_seconds=0.5))


#: Any JSON value, nested a little: what a producer could put in a message.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=12,
)


def is_coded(error: object) -> bool:
    return isinstance(error, TenantKeysError) and str(error.code).startswith("TK-")
