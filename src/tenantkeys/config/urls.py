"""The URL settings checked when they are read (scheme, host, port, database), and masked.

A URL that cannot work fails at load with the variable's name and the form it should take,
never later as a driver's traceback (``127.0.0.1:6379`` without ``redis://`` used to reach
Celery as ``No module named '127'``). Every URL we print goes through :func:`masked_url`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, quote, unquote, urlsplit

#: Redis behind Sentinel: ``sentinel://h1:26379;sentinel://h2:26379/0`` (kombu's and Celery's
#: form) or ``redis+sentinel://h1:26379;h2:26379/0``, which :func:`check_url` rewrites to it.
SENTINEL_SCHEMES = ("sentinel", "redis+sentinel")
#: Schemes each URL setting accepts; ``unix`` is a Redis socket (``unix:///run/redis.sock``).
REDIS_SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp", *SENTINEL_SCHEMES)
RESULT_SCHEMES = ("redis", "rediss", *SENTINEL_SCHEMES)
#: SQLAlchemy dialects, with or without a driver (``postgresql+psycopg``).
DATABASE_SCHEMES = ("sqlite", "postgresql")

_EXAMPLES = {
    "redis": "redis://127.0.0.1:6379/0",
    "broker": "redis://127.0.0.1:6379/0 or amqp://guest:guest@127.0.0.1:5672//",
    "result": "redis://127.0.0.1:6379/0",
    "database": "sqlite:////abs/path/keys.db or postgresql+psycopg://user@host:5432/db",
    "sentinel": "sentinel://s1:26379;sentinel://s2:26379;sentinel://s3:26379/0",
}


@dataclass(frozen=True)
class SentinelAddress:
    """Where a Sentinel URL points: the sentinels, and the database and login of the primary."""

    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None

    def __repr__(self) -> str:  # the password stays out of logs and tracebacks
        return f"SentinelAddress(sentinels={self.sentinels!r}, db={self.db})"


def is_sentinel(url: str) -> bool:
    """True for a Sentinel URL (either form)."""
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def masked_url(url: str) -> str:
    """``url`` with its password (or a lone credential) replaced by ``***``.

    A failover list (kombu's ``amqp://n1;amqp://n2``) is masked URL by URL.
    """
    if ";" in url:
        return ";".join(_masked_one(part) for part in url.split(";"))
    return _masked_one(url)


def _masked_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:  # a later host of ``redis+sentinel://a:1;user:pw@b:2`` has no scheme
        scheme, rest = "", url
    netloc, slash, tail = rest.partition("/")
    if "@" not in netloc:
        return url
    credentials, _, host = netloc.rpartition("@")
    user, colon, _password = credentials.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}{sep}{shown}@{host}{slash}{tail}"


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
    if dialect in SENTINEL_SCHEMES:
        return _sentinel_url(sentinel_address(value))
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


def sentinel_address(url: str) -> SentinelAddress:
    """The sentinels, database and login of a Sentinel URL; ValueError names what is wrong.

    Every ``;``-separated part names one sentinel (``host:port``, 26379 when left out); the
    database (``/N``) and login may sit on any part, and must agree where given twice.
    """
    shown = masked_url(url)
    scheme, _, rest = url.partition("://")
    sentinels: list[tuple[str, int]] = []
    dbs: set[str] = set()
    logins: set[tuple[str | None, str | None]] = set()
    for raw in rest.split(";"):
        part = raw.strip()
        prefix, sep, body = part.partition("://")
        if sep and prefix.lower() not in SENTINEL_SCHEMES:
            raise ValueError(f"{shown!r}: every part of a Sentinel URL is a sentinel, not {prefix}")
        parts = urlsplit(f"{scheme}://{body if sep else part}")
        try:
            port = 26379 if parts.port is None else parts.port
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise ValueError(f"{shown!r}: the port is not a number from 1 to 65535")
        if not parts.hostname:
            raise ValueError(f"{shown!r}: a part names no sentinel; e.g. {_EXAMPLES['sentinel']}")
        sentinels.append((parts.hostname, port))
        if parts.path.strip("/"):
            _check_redis_db(parts, shown)
            dbs.add(parts.path.strip("/"))
        if parts.username is not None or parts.password is not None:
            logins.add((_unquoted(parts.username), _unquoted(parts.password)))
    if len(dbs) > 1 or len(logins) > 1:
        raise ValueError(f"{shown!r}: the parts name different databases or logins")
    username, password = logins.pop() if logins else (None, None)
    return SentinelAddress(tuple(sentinels), int(dbs.pop()) if dbs else 0, username, password)


def _unquoted(value: str | None) -> str | None:
    return unquote(value) if value else None


def _sentinel_url(address: SentinelAddress) -> str:
    """kombu's and Celery's form: each sentinel its own URL, each with the login and database
    (kombu reads them from the first part, Celery from the first host)."""
    login = ""
    if address.username or address.password:
        user = quote(address.username or "", safe="")
        login = f"{user}:{quote(address.password, safe='')}@" if address.password else f"{user}@"
    return ";".join(
        f"sentinel://{login}{_host(host)}:{port}/{address.db}" for host, port in address.sentinels
    )


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
