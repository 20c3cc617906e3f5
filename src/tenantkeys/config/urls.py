"""The URL settings checked when they are read (scheme, host, port, database), and masked.

A URL that cannot work fails at load with the variable's name and the form it should take,
never later as a driver's traceback (``127.0.0.1:6379`` without ``redis://`` used to reach
Celery as ``No module named '127'``). Every URL we print goes through :func:`masked_url`.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

#: Schemes each URL setting accepts; ``unix`` is a Redis socket (``unix:///run/redis.sock``).
REDIS_SCHEMES = ("redis", "rediss", "unix")
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp", "sentinel")
RESULT_SCHEMES = ("redis", "rediss", "sentinel")
#: SQLAlchemy dialects, with or without a driver (``postgresql+psycopg``).
DATABASE_SCHEMES = ("sqlite", "postgresql")

_EXAMPLES = {
    "redis": "redis://127.0.0.1:6379/0",
    "broker": "redis://127.0.0.1:6379/0 or amqp://guest:guest@127.0.0.1:5672//",
    "result": "redis://127.0.0.1:6379/0",
    "database": "sqlite:////abs/path/keys.db or postgresql+psycopg://user@host:5432/db",
}


def masked_url(url: str) -> str:
    """``url`` with its password (or a lone credential) replaced by ``***``.

    A failover list (kombu's ``amqp://n1;amqp://n2``) is masked URL by URL.
    """
    if ";" in url:
        return ";".join(_masked_one(part) for part in url.split(";"))
    return _masked_one(url)


def _masked_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if not sep or "@" not in netloc:
        return url
    credentials, _, host = netloc.rpartition("@")
    user, colon, _password = credentials.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}://{shown}@{host}{slash}{tail}"


def check_url(value: str, kind: str) -> str:
    """``value`` if it is a usable URL of ``kind`` (redis, broker, result, database).

    Raises ValueError with a one-line reason, the URL masked, and the form expected.
    """
    schemes = {
        "redis": REDIS_SCHEMES,
        "broker": BROKER_SCHEMES,
        "result": RESULT_SCHEMES,
        "database": DATABASE_SCHEMES,
    }[kind]
    shown = masked_url(value)
    example = _EXAMPLES[kind]
    if "://" not in value:
        raise ValueError(f"{shown!r} has no scheme; write it as {example}")
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    dialect = scheme.partition("+")[0] if kind == "database" else scheme
    if dialect not in schemes:
        raise ValueError(
            f"{shown!r}: scheme {scheme!r} is not one of {', '.join(schemes)}; e.g. {example}"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{shown!r}: the port is not a number from 1 to 65535") from None
    if port == 0:
        raise ValueError(f"{shown!r}: the port is not a number from 1 to 65535")
    if dialect in ("sqlite", "unix"):
        if dialect == "unix" and not parts.path:
            raise ValueError(f"{shown!r}: a unix socket URL needs a path (unix:///run/redis.sock)")
        return value
    if not parts.hostname and dialect != "postgresql":  # libpq may take a socket from its env
        raise ValueError(f"{shown!r} names no host; e.g. {example}")
    if dialect in ("redis", "rediss"):
        _check_redis_db(parts, shown)
    return value


def _check_redis_db(parts: SplitResult, shown: str) -> None:
    """The database number: ``/N`` after the host (none means 0)."""
    db = parts.path.strip("/")
    if db and not (db.isdigit() and int(db) < 1_000_000):
        raise ValueError(
            f"{shown!r}: the Redis database {db!r} must be a number (redis://host:6379/0)"
        )
