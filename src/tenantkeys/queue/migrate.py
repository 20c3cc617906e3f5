"""Jobs and results left under the Celery keys of earlier versions, moved to where Celery looks.

Earlier versions gave Celery's own Redis keys kombu's ``global_keyprefix``
(``<TENANTKEYS_REDIS_PREFIX>:``): the queue lists, kombu's unacked records and the
``celery-task-meta-<id>`` results. Celery's keys now carry no prefix, so a standard Celery
client in any language finds them. :func:`migrate_keys` moves what the old keys still hold:

* queued messages (``<prefix>:<queue>`` and kombu's priority lists
  ``<prefix>:<queue>\\x06\\x16<n>``) go to the end of the same queue that is taken first, oldest
  first; each message moves in one atomic ``LMOVE``, so it is always in exactly one list, and
  two movers never copy one twice;
* unacked records (``<prefix>:unacked`` and ``<prefix>:unacked_index``) join kombu's unacked
  records with their timestamp: a job a stopped worker held comes back after the visibility
  timeout, as it would have (one an old worker still runs then runs again under its job id);
* results (``<prefix>:celery-task-meta-<id>``) are renamed, keeping their expiry; a result the
  new key already holds wins.

Moving twice, or from two workers at once, moves nothing twice. The worker runs it at startup;
``tenantkeys queue migrate-keys`` runs it on demand (``--dry-run`` counts without moving).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from tenantkeys import jobs
from tenantkeys.config import Settings
from tenantkeys.errors import ConfigurationError, ErrorCode, InvalidRequest, TransientError
from tenantkeys.keys.runtime import redis_from_url

#: kombu's Redis priority steps and the separator of a priority list's name
#: (``kombu.transport.redis.PRIORITY_STEPS`` and ``Channel.sep``; checked by a unit test).
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"
#: kombu's unacked records and Celery's result keys.
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
RESULT_KEY = "celery-task-meta-"
_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,32}")
#: Messages one script call moves: a call holds Redis for well under a millisecond.
_BATCH = 100
_TIMEOUT_SECONDS = 5.0

# Up to ARGV[1] messages, newest first, each onto the end of KEYS[2] that is taken first:
# the oldest old message ends up taken first, ahead of anything queued since.
_MOVE_QUEUED = """
local moved = 0
while moved < tonumber(ARGV[1]) do
  if not redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') then break end
  moved = moved + 1
end
return moved
"""
# One unacked record (tag ARGV[1]) from the old hash and index (KEYS[1], KEYS[2]) to the new
# ones (KEYS[3], KEYS[4]), keeping its timestamp (ARGV[2] when the index had none).
_MOVE_UNACKED = """
local body = redis.call('HGET', KEYS[1], ARGV[1])
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not body then return 0 end
redis.call('HSETNX', KEYS[3], ARGV[1], body)
redis.call('ZADD', KEYS[4], 'NX', score or ARGV[2], ARGV[1])
return 1
"""
# A result from KEYS[1] to KEYS[2] (RENAME keeps its expiry), unless KEYS[2] holds a newer one.
_MOVE_RESULT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
"""


def queue_keys(queue: str) -> list[str]:
    """kombu's Redis lists of ``queue``, one per priority step (the first is the plain name)."""
    return [f"{queue}{PRIORITY_SEP}{step}" if step else queue for step in PRIORITY_STEPS]


@dataclass
class KeyMigration:
    """What :func:`migrate_keys` moved (or, on a dry run, found) under the old prefix."""

    prefix: str
    dry_run: bool
    #: Queued messages per queue; empty when the broker is not Redis.
    queued: dict[str, int] = field(default_factory=dict)
    unacked: int = 0
    results: int = 0
    broker_is_redis: bool = True
    results_in_redis: bool = True

    @property
    def total(self) -> int:
        return sum(self.queued.values()) + self.unacked + self.results

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def migrate_keys(
    settings: Settings, *, dry_run: bool = False, prefix: str | None = None
) -> KeyMigration:
    """Move what the old prefixed keys of ``prefix`` (default ``TENANTKEYS_REDIS_PREFIX``) hold.

    ``TK-INVALID-ARGUMENT`` for a prefix the setting would refuse; ``TK-BROKER-UNAVAILABLE``
    when the broker's or the result backend's Redis cannot be reached; ``TK-CONFIG-INVALID``
    when an old key holds something that is not kombu's.
    """
    if prefix is not None and not _PREFIX.fullmatch(prefix):
        # The rule of TENANTKEYS_REDIS_PREFIX: the prefix goes into key names and SCAN patterns.
        raise InvalidRequest(
            "the old prefix must be 1-32 letters, digits, '.', '_' or '-'",
            code=ErrorCode.INVALID_ARGUMENT,
        )
    old = f"{prefix or settings.redis_prefix}:"
    report = KeyMigration(prefix=old[:-1], dry_run=dry_run)
    broker = settings.effective_broker_url
    report.broker_is_redis = _is_redis(broker)
    if report.broker_is_redis:
        with _redis(settings, broker, "broker") as client:
            for queue in jobs.QUEUES:
                report.queued[queue] = _move_queue(client, old, queue, dry_run)
            report.unacked = _move_unacked(client, old, dry_run)
    backend = settings.effective_result_backend
    report.results_in_redis = _is_redis(backend)
    if report.results_in_redis:
        with _redis(settings, backend, "result backend") as client:
            report.results = _move_results(client, old, dry_run)
    return report


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://", "sentinel://"))


@contextmanager
def _redis(settings: Settings, url: str, what: str) -> Iterator[redis.Redis]:
    """A Redis client of ``url`` whose failures become coded errors naming ``what``."""
    client = redis_from_url(
        url, sentinel_master=settings.redis_sentinel_master, timeout=_TIMEOUT_SECONDS
    )
    try:
        yield client
    except redis.ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        raise ConfigurationError(
            f"an old key in the {what} is not kombu's or Celery's (WRONGTYPE): another "
            "application writes under this TENANTKEYS_REDIS_PREFIX",
            code=ErrorCode.CONFIG_INVALID,
        ) from exc
    except redis.RedisError as exc:
        raise TransientError(
            f"the {what} cannot be reached to move the old keys ({type(exc).__name__})",
            code=ErrorCode.BROKER_UNAVAILABLE,
        ) from exc
    finally:
        client.close()


def _move_queue(client: redis.Redis, old: str, queue: str, dry_run: bool) -> int:
    moved = 0
    script = client.register_script(_MOVE_QUEUED)
    for key in queue_keys(queue):
        if dry_run:
            moved += int(client.llen(old + key))
            continue
        while step := int(script(keys=[old + key, key], args=[_BATCH])):
            moved += step
    return moved


def _move_unacked(client: redis.Redis, old: str, dry_run: bool) -> int:
    hash_key, index_key = old + UNACKED_KEY, old + UNACKED_INDEX_KEY
    if dry_run:
        return int(client.hlen(hash_key))
    script = client.register_script(_MOVE_UNACKED)
    keys = [hash_key, index_key, UNACKED_KEY, UNACKED_INDEX_KEY]
    moved = 0
    for tag in _tags(client, hash_key, index_key):
        moved += int(script(keys=keys, args=[tag, time.time()]))
    return moved


def _tags(client: redis.Redis, hash_key: str, index_key: str) -> Iterator[bytes]:
    """Every tag of the old hash, then those only the old index still names."""
    seen: set[bytes] = set()
    for tag, _ in client.hscan_iter(hash_key):  # (NOVALUES needs Redis 7.4)
        seen.add(tag)
        yield tag
    for tag, _ in client.zscan_iter(index_key):
        if tag not in seen:
            yield tag


def _move_results(client: redis.Redis, old: str, dry_run: bool) -> int:
    script = client.register_script(_MOVE_RESULT)
    moved = 0
    for key in client.scan_iter(match=f"{old}{RESULT_KEY}*", count=1000):
        if dry_run:
            moved += 1
            continue
        moved += int(script(keys=[key, key[len(old) :]]))
    return moved
