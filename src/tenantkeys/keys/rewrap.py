"""Re-wrap every stored data key under another KMS provider while the service keeps signing.

For each row still wrapped elsewhere, :class:`Rewrapper` unwraps the data key with the row's
own provider, wraps it with the target under the same context, and *verifies* the result
(the target unwraps it and the sealed secret opens under the row's context) before a
conditional update swaps it in. The sealed secret itself never changes, so signatures, kids
and ciphertexts stay valid. The (tenant, purpose) is then invalidated in L1 and L2, so no
worker keeps serving the old wrapped record.

The run is resumable: the update only lands if the row still holds the wrapped key that was
read, so an interrupted run started again neither wraps a row twice nor skips one. It loops
until no row is left, picking up rows the old provider wrapped while it ran. A failing row is
reported with its code and does not stop the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from tenantkeys.errors import ErrorCode, StoreUnavailable, TenantKeysError, TransientError
from tenantkeys.keys.envelope import Sealed, open_sealed, rewrap
from tenantkeys.keys.kms import MeteredProvider
from tenantkeys.keys.model import KeyVersion
from tenantkeys.keys.schema import key_versions
from tenantkeys.keys.service import KeyService

log = logging.getLogger(__name__)

Outcome = Literal["rewrapped", "already_done", "skipped_changed", "failed"]
RowKey = tuple[str, str, int]

#: Failures listed one by one in the report; past this only the count grows.
MAX_LISTED_FAILURES = 100
#: Re-reads of a row that changed under us (another writer) before it counts as failed.
_MAX_RACES = 3


@dataclass(frozen=True)
class RowFailure:
    """A row that could not be re-wrapped; it is left exactly as it was."""

    tenant_id: str
    purpose: str
    version: int
    kid: str
    provider: str
    code: str
    message: str


@dataclass
class RewrapReport:
    """What a run did. ``already_done`` counts rows found on the target (a resumed run)."""

    target: str
    target_key_id: str
    rewrapped: int = 0
    already_done: int = 0
    skipped_changed: int = 0
    failed: int = 0
    failures: list[RowFailure] = field(default_factory=list)
    invalidations_missed: int = 0
    remaining: int = 0
    stopped_at_limit: bool = False
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.remaining == 0 and self.failed == 0

    @property
    def rows_per_second(self) -> float:
        return round(self.rewrapped / self.seconds, 1) if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary ``tenantkeys keys rewrap`` prints (no key material)."""
        return {
            "target": self.target,
            "target_key_id": self.target_key_id,
            "rewrapped": self.rewrapped,
            "already_done": self.already_done,
            "skipped_changed": self.skipped_changed,
            "failed": self.failed,
            "remaining": self.remaining,
            "complete": self.complete,
            "stopped_at_limit": self.stopped_at_limit,
            "invalidations_missed": self.invalidations_missed,
            "seconds": round(self.seconds, 3),
            "rows_per_second": self.rows_per_second,
            "failures": [vars(f) for f in self.failures],
        }


class Rewrapper:
    """Moves every wrapped data key of ``service``'s store to the provider ``target``.

    ``on_row(version, outcome)`` runs after each row (progress bars, tests). ``limit`` stops
    after that many rows; the next run carries on where this one stopped.
    """

    def __init__(
        self,
        service: KeyService,
        target: str,
        *,
        batch_size: int = 100,
        limit: int | None = None,
        on_row: Callable[[KeyVersion, Outcome], None] | None = None,
        transient_attempts: int = 3,
        backoff_seconds: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        if transient_attempts < 1:
            raise ValueError("transient_attempts must be >= 1")
        self.service = service
        self.target: MeteredProvider = service.providers.get(target)
        self.batch_size = batch_size
        self.limit = limit
        self.on_row = on_row
        self.transient_attempts = transient_attempts
        self.backoff_seconds = backoff_seconds
        self._sleep = sleep

    # -- counts --------------------------------------------------------------------------

    def pending(self) -> int:
        """Rows holding a wrapped data key that is not under the target (yet)."""
        return self._count(on_target=False)

    def _count(self, *, on_target: bool) -> int:
        t = key_versions
        on = sa.and_(t.c.provider == self.target.name, t.c.provider_key_id == self.target.key_id)
        query = sa.select(sa.func.count()).where(
            t.c.wrapped_data_key.is_not(None), on if on_target else sa.not_(on)
        )
        try:
            with self.service.store.engine.connect() as conn:
                return int(conn.execute(query).scalar_one())
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailable(f"key store unreachable ({type(exc).__name__})") from exc

    # -- the run -------------------------------------------------------------------------

    def run(self) -> RewrapReport:
        """Re-wrap until no row is left (or ``limit`` rows were handled); never raises per row."""
        started = time.perf_counter()
        report = RewrapReport(self.target.name, self.target.key_id)
        report.already_done = self._count(on_target=True)
        failed: set[RowKey] = set()  # not retried in this run, so the loop always ends
        handled = 0
        while True:
            # Failed rows stay first in line; ask for enough rows to see past them.
            batch = [
                row
                for row in self.service.store.needing_rewrap(
                    self.target.name, self.target.key_id, limit=self.batch_size + len(failed)
                )
                if _row_key(row) not in failed
            ][: self.batch_size]
            if not batch:
                break
            for row in batch:
                if self.limit is not None and handled >= self.limit:
                    report.stopped_at_limit = True
                    break
                outcome = self._handle(row, report)
                if outcome == "failed":
                    failed.add(_row_key(row))
                handled += 1
                if self.on_row is not None:
                    self.on_row(row, outcome)
            if report.stopped_at_limit:
                break
        report.remaining = self.pending()
        report.seconds = time.perf_counter() - started
        return report

    def _handle(self, row: KeyVersion, report: RewrapReport) -> Outcome:
        outcome = self._rewrap_row(row, report)
        if outcome == "rewrapped":
            report.rewrapped += 1
        elif outcome == "already_done":
            report.already_done += 1
        elif outcome == "skipped_changed":
            report.skipped_changed += 1
        return outcome

    def _rewrap_row(self, row: KeyVersion, report: RewrapReport) -> Outcome:
        current: KeyVersion | None = row
        for _race in range(_MAX_RACES):
            if current is None or current.wrapped_data_key is None:
                return "skipped_changed"  # revoked or retired meanwhile: no secret left to wrap
            if self._on_target(current):
                return "already_done"  # another run re-wrapped it first
            try:
                wrapped = self._with_retries(current)
                swapped = self.service.store.replace_wrapping(
                    current, wrapped, self.target.name, self.target.key_id
                )
            except TenantKeysError as exc:
                return self._failed(report, current, exc.code, exc.one_line())
            except Exception as exc:  # an unmapped SDK error: report the row, go on
                log.exception("rewrap of %s failed unexpectedly", _describe(current))
                message = f"unexpected {type(exc).__name__} (see the log)"
                return self._failed(report, current, ErrorCode.INTERNAL, message)
            if swapped:
                self._invalidate(current, report)
                return "rewrapped"
            store = self.service.store
            current = store.get(current.tenant_id, current.purpose, current.version)
        assert current is not None
        message = "the row kept changing under concurrent writers; run rewrap again"
        return self._failed(report, current, ErrorCode.INTERNAL, message)

    def _with_retries(self, row: KeyVersion) -> bytes:
        for attempt in range(1, self.transient_attempts + 1):
            try:
                return self._wrap_and_verify(row)
            except TransientError:
                if attempt == self.transient_attempts:
                    raise
                self._sleep(self.backoff_seconds * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _wrap_and_verify(self, row: KeyVersion) -> bytes:
        """The data key wrapped by the target, proven to open the row's secret."""
        assert row.wrapped_secret is not None and row.wrapped_data_key is not None
        source = self.service.providers.get(row.provider)  # the row's own provider, no fallback
        context = row.context
        wrapped = rewrap(row.wrapped_data_key, context, source, self.target)
        # Verify before the swap: the target unwraps it and the secret opens under the context.
        secret = open_sealed(Sealed(row.wrapped_secret, wrapped), context, self.target)
        secret[:] = bytes(len(secret))  # the plaintext secret is not needed: drop it
        return wrapped

    def _on_target(self, row: KeyVersion) -> bool:
        return row.provider == self.target.name and row.provider_key_id == self.target.key_id

    def _invalidate(self, row: KeyVersion, report: RewrapReport) -> None:
        purpose = row.purpose.value
        self.service.l1.invalidate(row.tenant_id, purpose)
        l2 = self.service.l2
        if l2 is not None and not l2.invalidate(row.tenant_id, purpose):
            report.invalidations_missed += 1

    def _failed(self, report: RewrapReport, row: KeyVersion, code: str, message: str) -> Outcome:
        report.failed += 1
        log.warning("rewrap of %s failed: %s", _describe(row), message)
        if len(report.failures) < MAX_LISTED_FAILURES:
            report.failures.append(
                RowFailure(
                    row.tenant_id,
                    row.purpose.value,
                    row.version,
                    row.kid,
                    row.provider,
                    str(code),
                    message,
                )
            )
        return "failed"


def _row_key(row: KeyVersion) -> RowKey:
    return (row.tenant_id, row.purpose.value, row.version)


def _describe(row: KeyVersion) -> str:
    return f"{row.tenant_id}/{row.purpose.value}/v{row.version} ({row.provider})"
