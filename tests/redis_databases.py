"""Redis databases leased to one test deployment at a time.

Celery's own keys (queue lists, unacked records, ``celery-task-meta-<id>``) carry no prefix, so
two deployments in one database would share queues: each worker would take the other's jobs.
So a deployment leases a database of its own: ``SET tktest:db-lease:<n> <owner> NX EX <ttl>`` in
database 0, refreshed by a thread while held. The database is flushed when leased (what a
crashed run left) and when released. A run that dies without releasing loses its lease when
the TTL runs out.

The pool leaves out database 0 (the leases, and the default of a developer's own Redis) and the
databases tests without workers use by number, under prefixes (a lease flushes its database):
6 (security), 8 (``tenantkeys bench``'s default), 9 (rewrap), 11 (core tests, and private queue
names), 12 (dead letters). ``TK_TEST_REDIS_DBS`` (``1,2,3``) overrides it.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import weakref
from contextlib import suppress

import redis

from tests.conftest import REDIS_HOST, REDIS_PORT

POOL = tuple(
    int(n) for n in os.environ.get("TK_TEST_REDIS_DBS", "1,2,3,4,5,7,10,13,14,15").split(",")
)
LEASE_DB = 0
LEASE_KEY = "tktest:db-lease:{}"
#: A lease outlives a stalled refresh by this much; a crashed run's database is free after it.
LEASE_TTL_SECONDS = 60
REFRESH_SECONDS = 15
#: How long to wait for a database when every one is leased (other test runs on the machine).
WAIT_SECONDS = 600

# Extend only a lease we still hold; release only our own (after flushing its database).
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisDatabase:
    """A leased database: its number and URL. :meth:`release` (or the lease's holder being
    garbage-collected, or the process exiting) flushes it and frees it."""

    def __init__(self, number: int, owner: str) -> None:
        self.number = number
        self.owner = owner
        self.url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{number}"
        self._release = weakref.finalize(self, _release, number, owner)

    def __repr__(self) -> str:
        return f"RedisDatabase({self.number})"

    def release(self) -> None:
        """Flush the database and free the lease (once; later calls do nothing)."""
        self._release()


def _flush(number: int) -> None:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


def _release(number: int, owner: str) -> None:
    # Redis down (a fault test gone wrong): the lease expires, and the next holder flushes.
    with suppress(redis.RedisError):
        _flush(number)
        client = _lease_client()
        try:
            client.eval(_RELEASE, 1, LEASE_KEY.format(number), owner)
        finally:
            client.close()


_HELD: weakref.WeakSet[RedisDatabase] = weakref.WeakSet()
_REFRESHER: threading.Thread | None = None
_LOCK = threading.Lock()


def _lease_client() -> redis.Redis:
    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=LEASE_DB, socket_timeout=5)


def lease_database(what: str = "test") -> RedisDatabase:
    """A database no other deployment uses, flushed; waits while every one is leased."""
    owner = f"{what}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    client = _lease_client()
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        while True:
            for number in POOL:
                if client.set(LEASE_KEY.format(number), owner, nx=True, ex=LEASE_TTL_SECONDS):
                    _flush(number)  # what a crashed holder left behind
                    leased = RedisDatabase(number, owner)
                    _hold(leased)
                    return leased
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no free Redis database among {POOL} after {WAIT_SECONDS} s "
                    "(each test deployment leases one; see tests/redis_databases.py)"
                )
            time.sleep(0.5)
    finally:
        client.close()


def _hold(leased: RedisDatabase) -> None:
    global _REFRESHER
    with _LOCK:
        _HELD.add(leased)
        if _REFRESHER is None or not _REFRESHER.is_alive():
            _REFRESHER = threading.Thread(target=_refresh, name="redis-db-leases", daemon=True)
            _REFRESHER.start()


def _refresh() -> None:
    while True:
        time.sleep(REFRESH_SECONDS)
        held = [leased for leased in _HELD if leased._release.alive]
        if not held:
            continue
        try:
            client = _lease_client()
            try:
                for leased in held:
                    key = LEASE_KEY.format(leased.number)
                    client.eval(_REFRESH, 1, key, leased.owner, LEASE_TTL_SECONDS)
            finally:
                client.close()
        except redis.RedisError:
            pass  # Redis is down for a fault test: the next round tries again
