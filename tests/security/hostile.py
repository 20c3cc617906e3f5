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
from tenantkeys.jobs.contract import (
    CREATE_KEYS,
    MAX_BATCH_ITEMS,
    REVOKE_KEY,
    ROTATE_KEY,
    ROTATION_SWEEP,
    SIGN,
    SIGN_BATCH,
)
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


# -- hostile msgpack bodies (workers accept msgpack for the compact sign_batch) ------------------

#: A payload whose bytes (raw, base64 or hex) must never reach a log line.
SECRET_PAYLOAD = b"\x02hostile-secret-payload\xfd" * 4
MSGPACK = "application/x-msgpack"


def packed(body: Any) -> bytes:
    """``body`` as msgpack, bin for bytes (kombu's own ``use_bin_type=True``)."""
    import msgpack

    return bytes(msgpack.packb(body, use_bin_type=True, strict_types=False))


def nested_arrays(depth: int) -> bytes:
    """A msgpack body ``[[], {"payloads": [[[...]]]}, {}]`` nested ``depth`` arrays deep,
    written by hand (msgpack's own packer stops at its recursion limit)."""
    head = b"\x93\x90\x82" + packed("tenant_id") + packed("acme") + packed("payloads")
    return head + b"\x91" * depth + b"\x90" + b"\x80"


def hostile_msgpack_bodies() -> list[tuple[str, str, bytes, str]]:
    """``(case, task, msgpack body, code it must end with)``: what a producer writing msgpack
    by hand could send. ``TK-`` alone: any of our codes will do."""
    import msgpack

    secret = SECRET_PAYLOAD
    job = lambda kwargs: packed([[], kwargs, {}])  # noqa: E731 - a table of one-liners
    ext = msgpack.ExtType(42, secret)
    stamp = msgpack.Timestamp(2**33, 5)
    # Map keys that are ints: msgpack's strict_map_key (kombu's default) refuses them.
    int_keys = (
        b"\x93\x90\x82\x01" + packed("acme") + packed("payloads") + packed([secret]) + b"\x80"
    )
    cases: list[tuple[str, str, bytes, str]] = [
        (
            "ext type payload",
            SIGN_BATCH,
            job({"tenant_id": "acme", "payloads": [ext]}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "ext type tenant",
            SIGN_BATCH,
            job({"tenant_id": ext, "payloads": [secret]}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "timestamp ext tenant",
            SIGN,
            packed([[], {"tenant_id": stamp, "payload": "YQ=="}, {}]),
            "TK-INVALID-ARGUMENT",
        ),
        ("ext type as kwargs", SIGN_BATCH, packed([[], ext, {}]), "TK-INVALID-ARGUMENT"),
        (
            "ext type as embed",
            SIGN_BATCH,
            packed([[], {"tenant_id": "acme", "payloads": [secret]}, ext]),
            "TK-INVALID-ARGUMENT",
        ),
        ("int map keys", SIGN_BATCH, int_keys, "TK-INVALID-ENCODING"),
        (
            "bin kwargs keys",
            SIGN_BATCH,
            job({b"tenant_id": "acme", b"payloads": [secret]}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "bin and str kwargs keys",
            SIGN_BATCH,
            job({b"tenant_id": "x", "tenant_id": "acme", "payloads": [secret]}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "bin key in an item",
            SIGN_BATCH,
            job({"items": [{b"tenant_id": "acme", "payload": "YQ=="}]}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "bin embed keys",
            SIGN_BATCH,
            packed([[], {"tenant_id": "acme", "payloads": [secret]}, {b"chain": None}]),
            "TK-INVALID-ARGUMENT",
        ),
        ("nested arrays (decodable)", SIGN_BATCH, nested_arrays(1000), "TK-INVALID-ARGUMENT"),
        ("nested arrays (too deep)", SIGN_BATCH, nested_arrays(100_000), "TK-INVALID-ENCODING"),
        (
            "huge ints",
            SIGN_BATCH,
            job({"tenant_id": 2**64 - 1, "payloads": [-(2**63)], "canonical_json": 2**63}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "huge int payload count",
            SIGN_BATCH,
            job({"tenant_id": "acme", "payloads": [2**64 - 1] * 3}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "tenant_id as bin",
            SIGN_BATCH,
            job({"tenant_id": b"acme", "payloads": [secret]}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "items form with bin payloads",
            SIGN_BATCH,
            job({"items": [{"tenant_id": "acme", "payload": secret}]}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "items and payloads",
            SIGN_BATCH,
            job({"tenant_id": "acme", "payloads": [secret], "items": []}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "payloads not a list",
            SIGN_BATCH,
            job({"tenant_id": "acme", "payloads": secret}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "payloads a map",
            SIGN_BATCH,
            job({"tenant_id": "acme", "payloads": {"a": secret}}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "empty payloads",
            SIGN_BATCH,
            job({"tenant_id": "acme", "payloads": []}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "too many payloads",
            SIGN_BATCH,
            job({"tenant_id": "acme", "payloads": [b"a"] * (MAX_BATCH_ITEMS + 1)}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "tenant without keys",
            SIGN_BATCH,
            job({"tenant_id": "nokeys", "payloads": [secret]}),
            "TK-KEY-NOT-FOUND",
        ),
        (
            "canonical_json as bin",
            SIGN_BATCH,
            job({"tenant_id": "acme", "payloads": [secret], "canonical_json": b"\x01"}),
            "TK-INVALID-ARGUMENT",
        ),
        (
            "truncated",
            SIGN_BATCH,
            job({"tenant_id": "acme", "payloads": [secret]})[:-7],
            "TK-INVALID-ENCODING",
        ),
        ("truncated header", SIGN_BATCH, b"\x93\x90", "TK-INVALID-ENCODING"),
        ("reserved byte 0xc1", SIGN_BATCH, b"\xc1", "TK-INVALID-ENCODING"),
        (
            "trailing bytes",
            SIGN_BATCH,
            job({"tenant_id": "acme", "payloads": [secret]}) + b"\x00",
            "TK-INVALID-ENCODING",
        ),
        (
            "body is a map",
            SIGN_BATCH,
            packed({"tenant_id": "acme", "payloads": [secret]}),
            "TK-INVALID-ARGUMENT",
        ),
        ("body is bin", SIGN_BATCH, packed(secret), "TK-INVALID-ARGUMENT"),
        ("positional bin", SIGN_BATCH, packed([[secret], {}, {}]), "TK-"),
    ]
    # A msgpack body for every task name: each with a tenant id in bin, and one more key.
    for task in (SIGN, SIGN_BATCH, CREATE_KEYS, ROTATE_KEY, REVOKE_KEY, ROTATION_SWEEP):
        # rotation_sweep takes no arguments: a named one is TK-INVALID-ARGUMENT too.
        cases.append(
            (f"{task} with a bin tenant", task, job({"tenant_id": b"acme", "x": secret}), "TK-")
        )
        cases.append(
            (f"{task}, bin keys", task, job({b"tenant_id": secret}), "TK-INVALID-ARGUMENT")
        )
        cases.append((f"{task}, kwargs a bin", task, packed([[], secret, {}]), "TK-"))
    cases.append(("unknown task", "tenantkeys.nope", job({"tenant_id": "acme"}), "TK-"))
    return cases


def _ext_types() -> st.SearchStrategy[Any]:
    import msgpack

    return st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=16))


#: Any value a msgpack body can decode to with kombu's decoder (``raw=False``): JSON's, plus
#: bin (bytes), ext types, 64-bit ints, and bin and int map keys (int keys: a decoder with
#: ``strict_map_key`` off; kombu's refuses them, as the broker test shows).
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | _ext_types(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(max_size=12) | st.binary(max_size=12) | st.integers(-(2**63), 2**64 - 1),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)
