"""The dead-letter store and its one writer: jobs that failed for good, kept for review and replay.

Layout, under ``{redis_prefix}:dlq:``: ``entry:{id}`` (a hash per entry), ``index`` (sorted
set of live entry ids by first failure time), ``replaying`` (entries claimed by a replay, by
claim time) and ``first:{job_id}`` (when a job first failed, kept across its retries).

Entries show redacted arguments only (payload SHA-256 and size). The original arguments are
kept *sealed* under a dead-letter key of our own (:mod:`tenantkeys.jobs.sealing`), so replay
after a KMS outage needs no KMS. :class:`DeadLetterWriter` is the one place a failed job becomes
an entry plus its failed result; :mod:`tenantkeys.jobs.replay` is the one replay.

Replay is atomic per entry: the id moves from ``index`` to ``replaying`` in one step, the job is
published, then the entry is deleted. A replayer that dies in between leaves the entry in
``replaying``; :meth:`DeadLetterStore.recover_stale` puts it back. So an entry is never gone
without having been re-enqueued (at worst it is enqueued twice; job ids make that harmless).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from tenantkeys.config import Settings
from tenantkeys.errors import ErrorCode, InvalidRequest, TenantKeysError
from tenantkeys.jobs import messages
from tenantkeys.jobs.sealing import ArgumentSealer, load_or_create_key

__all__ = [
    "ArgumentSealer",
    "Attempt",
    "DeadLetter",
    "DeadLetterStore",
    "DeadLetterWriter",
    "ReplayReport",
    "SealedJob",
    "load_or_create_key",
]
#: How long the first-failure mark of a retrying job lives (longer than any retry sequence).
_FIRST_FAILURE_TTL = 7 * 86_400
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered job, as operators see it (never the payload)."""

    id: str
    task: str
    job_id: str
    tenant_id: str | None
    arguments: dict[str, Any]
    error_class: str
    code: str
    message: str
    attempts: int
    first_failure_at: float
    last_failure_at: float
    worker: str
    provider: str | None = None
    provider_code: str | None = None
    doc: str | None = None
    queue: str | None = None
    replayable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SealedJob:
    """The original job of an entry, opened for replay."""

    entry: DeadLetter
    kwargs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Attempt:
    """Where and how often a job ran: what a dead letter records besides the job itself."""

    job_id: str
    retries: int = 0
    queue: str | None = None
    worker: str = "unknown"

    @property
    def attempts(self) -> int:
        return self.retries + 1


@dataclass
class ReplayReport:
    replayed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


class DeadLetterStore:
    """Add, list (:meth:`entries`), show (:meth:`get`), replay and purge; depth and oldest age."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        sealer: ArgumentSealer,
        *,
        stale_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._base = f"{prefix}:dlq"
        self._index = f"{self._base}:index"
        self._replaying = f"{self._base}:replaying"
        self._sealer = sealer
        self._stale = stale_seconds
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis) -> DeadLetterStore:
        return cls(
            client,
            settings.redis_prefix,
            ArgumentSealer.from_file(settings.dead_letter_key_file),
            stale_seconds=settings.dead_letter_replay_stale_seconds,
        )

    def _entry_key(self, entry_id: str) -> str:
        return f"{self._base}:entry:{entry_id}"

    # -- writing -------------------------------------------------------------------------

    def note_failure(self, job_id: str) -> float:
        """Record (once) when ``job_id`` first failed; return that time."""
        key = f"{self._base}:first:{job_id}"
        now = self._clock()
        self._client.set(key, repr(now), nx=True, ex=_FIRST_FAILURE_TTL)
        stored = self._client.get(key)
        return float(stored) if stored else now

    def forget_failures(self, job_id: str) -> None:
        self._client.delete(f"{self._base}:first:{job_id}")

    def add(
        self,
        *,
        task: str,
        job_id: str,
        kwargs: Mapping[str, Any],
        arguments: Mapping[str, Any],
        error: TenantKeysError,
        attempts: int,
        worker: str,
        queue: str | None = None,
        options: Mapping[str, Any] | None = None,
        replayable: bool = True,
    ) -> DeadLetter:
        """Store a failed job: ``arguments`` redacted for display, ``kwargs`` sealed for replay."""
        now = self._clock()
        first = self.note_failure(job_id)
        # One entry per job id: a job dead-lettered again (a redelivered or re-sent copy)
        # updates its entry instead of adding a second one that a replay would double.
        job_key = f"{self._base}:job:{job_id}"
        known = self._client.get(job_key)
        entry_id = _text(known) if known else uuid.uuid4().hex
        if known and not self._client.exists(self._entry_key(entry_id)):
            entry_id = uuid.uuid4().hex
        entry = DeadLetter(
            id=entry_id,
            task=task,
            job_id=job_id,
            tenant_id=messages.tenant_of(kwargs),
            arguments=dict(arguments),
            error_class=type(error).__name__,
            code=str(error.code),
            message=error.message,
            attempts=attempts,
            first_failure_at=first,
            last_failure_at=now,
            worker=worker,
            provider=error.provider,
            provider_code=error.provider_code,
            doc=error.doc,
            queue=queue,
            replayable=replayable,
        )
        record: dict[Any, Any] = {k: json.dumps(v) for k, v in entry.to_dict().items()}
        record["sealed"] = self._sealer.seal(
            entry.id, {"kwargs": dict(kwargs), "options": dict(options or {})}
        )
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(self._entry_key(entry.id), mapping=record)
        pipe.zadd(self._index, {entry.id: first})
        pipe.set(job_key, entry.id)
        pipe.delete(f"{self._base}:first:{job_id}")
        pipe.execute()
        return entry

    # -- reading -------------------------------------------------------------------------

    def ids(self) -> list[str]:
        return [_text(i) for i in self._client.zrange(self._index, 0, -1)]

    def get(self, entry_id: str) -> DeadLetter:
        raw = self._client.hgetall(self._entry_key(entry_id))
        if not raw:
            raise InvalidRequest(
                f"no dead letter {entry_id!r}", code=ErrorCode.DEAD_LETTER_NOT_FOUND
            )
        return _entry(raw)

    def entries(
        self,
        *,
        tenant_id: str | None = None,
        task: str | None = None,
        code: str | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Live entries, oldest first, filtered by tenant, task and error code."""
        found = []
        for entry in self._load(self.ids()):
            if tenant_id is not None and entry.tenant_id != tenant_id:
                continue
            if task is not None and entry.task != task:
                continue
            if code is not None and entry.code != code:
                continue
            found.append(entry)
            if limit is not None and len(found) >= limit:
                break
        return found

    def _load(self, ids: Iterable[str]) -> list[DeadLetter]:
        ids = list(ids)
        pipe = self._client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.hgetall(self._entry_key(entry_id))
        return [_entry(raw) for raw in pipe.execute() if raw]

    def depth(self) -> int:
        """Entries waiting (not counting ones being replayed right now)."""
        return int(self._client.zcard(self._index))

    def oldest_age(self) -> float | None:
        """Seconds since the oldest waiting entry first failed; None when empty."""
        oldest = self._client.zrange(self._index, 0, 0, withscores=True)
        return max(0.0, self._clock() - float(oldest[0][1])) if oldest else None

    # -- replay and purge ----------------------------------------------------------------

    def replay(
        self, entry_ids: Iterable[str], publish: Callable[[SealedJob], None]
    ) -> ReplayReport:
        """Claim, publish and delete each entry; an entry that fails to publish stays."""
        report = ReplayReport()
        for entry_id in entry_ids:
            if not self._claim(entry_id):
                report.failed.append((entry_id, "not found or already being replayed"))
                continue
            raw = self._client.hgetall(self._entry_key(entry_id))
            try:
                entry = _entry(raw)
                opened = self._sealer.open(entry_id, _text(raw[b"sealed"]))
                publish(SealedJob(entry, opened["kwargs"], opened.get("options") or {}))
            except Exception as exc:  # put it back whatever went wrong, then report
                self._put_back(entry_id, raw)
                # Class name only for the unexpected: their text may hold a URL or a key id.
                reason = (
                    exc.one_line()
                    if isinstance(exc, TenantKeysError)
                    else f"unexpected {type(exc).__name__}"
                )
                report.failed.append((entry_id, reason))
                continue
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self._entry_key(entry_id), f"{self._base}:job:{entry.job_id}")
            pipe.zrem(self._replaying, entry_id)
            pipe.execute()
            report.replayed.append(entry_id)
        return report

    def _claim(self, entry_id: str) -> bool:
        """Move ``entry_id`` from the index to ``replaying`` in one transaction."""
        pipe = self._client.pipeline(transaction=True)
        pipe.zrem(self._index, entry_id)
        pipe.zadd(self._replaying, {entry_id: self._clock()}, nx=True)
        removed, added = pipe.execute()
        if removed:
            return True
        if added:  # it was not waiting: undo the claim we just made (nobody else held one)
            self._client.zrem(self._replaying, entry_id)
        return False

    def _put_back(self, entry_id: str, raw: Mapping[Any, Any]) -> None:
        """Return a claimed entry to the index (one transaction), unless it was purged."""
        if not raw or not self._client.exists(self._entry_key(entry_id)):
            self._client.zrem(self._replaying, entry_id)
            return
        pipe = self._client.pipeline(transaction=True)
        pipe.zrem(self._replaying, entry_id)
        pipe.zadd(self._index, {entry_id: json.loads(raw[b"first_failure_at"])})
        pipe.execute()

    def recover_stale(self) -> int:
        """Return entries whose replay claim is older than the stale limit to the index."""
        cutoff = self._clock() - self._stale
        recovered = 0
        for raw_id in self._client.zrangebyscore(self._replaying, "-inf", cutoff):
            entry_id = _text(raw_id)
            raw = self._client.hgetall(self._entry_key(entry_id))
            if not raw:  # published and deleted; only the claim was left behind
                self._client.zrem(self._replaying, entry_id)
                continue
            self._put_back(entry_id, raw)
            recovered += 1
        return recovered

    def purge(self, entry_ids: Iterable[str] | None = None) -> int:
        """Delete the given entries (all waiting ones when None); returns how many."""
        ids = self.ids() if entry_ids is None else list(entry_ids)
        removed = 0
        for entry_id in ids:
            pipe = self._client.pipeline(transaction=True)
            pipe.zrem(self._index, entry_id)
            pipe.zrem(self._replaying, entry_id)
            pipe.delete(self._entry_key(entry_id))
            removed += int(pipe.execute()[2])
        return removed


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(raw: Mapping[Any, Any]) -> DeadLetter:
    fields = {
        f: json.loads(raw[f.encode()]) for f in DeadLetter.__dataclass_fields__ if f.encode() in raw
    }
    return DeadLetter(**fields)


class DeadLetterWriter:
    """Turns a job that failed for good into a dead letter and the job's failed result.

    One per process, over that process's store: the runner (a job that gave up), the worker's
    lost-batch path and its consumer (messages no task could take) all write through it.
    Raises :class:`redis.RedisError` when the store is down: the caller keeps the job instead.
    """

    def __init__(self, store: DeadLetterStore) -> None:
        self.store = store

    def write(
        self,
        task: str,
        kwargs: Mapping[str, Any],
        error: TenantKeysError,
        attempt: Attempt,
        *,
        arguments: Mapping[str, Any] | None = None,
        replayable: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        """Store the entry; return the failed envelope naming it (``extra`` joins the error)."""
        entry = self.store.add(
            task=task,
            job_id=attempt.job_id,
            kwargs=messages.json_safe(kwargs),
            arguments=messages.redact(kwargs) if arguments is None else arguments,
            error=error,
            attempts=attempt.attempts,
            worker=attempt.worker,
            queue=attempt.queue,
            replayable=replayable,
        )
        log.warning(
            "job %s[%s] dead-lettered as %s: %s", task, attempt.job_id, entry.id, error.code
        )
        return messages.failed(error, dead_letter=entry.id, **extra)
