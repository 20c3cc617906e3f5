"""What every CLI command shares: settings loaded once, the runtime built on demand.

Commands that only read keys (``sign``, ``verify``, ``jwks``, ``keys list``, ``rotate``,
``revoke``) ask for :func:`runtime` with ``create=False``: they never create a key store or a
master key, and when there is none they say where they looked (the one-key-store rule,
:mod:`tenantkeys.config.locations`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tenantkeys.config import Settings, load_settings, masked_url
from tenantkeys.config.locations import search_data_dir, sqlite_path
from tenantkeys.errors import (
    CacheUnavailable,
    ConfigurationError,
    ErrorCode,
    TenantKeysError,
)
from tenantkeys.keys.model import KeyVersion
from tenantkeys.keys.runtime import Runtime, build_runtime


def settings() -> Settings:
    ctx = click.get_current_context()
    obj = ctx.find_root().ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load_settings()
    loaded: Settings = obj["settings"]
    return loaded


def loaded_settings(ctx: click.Context) -> Settings | None:
    """The settings if this invocation loaded them (for error messages), else None."""
    obj = ctx.find_root().obj
    found = obj.get("settings") if isinstance(obj, dict) else None
    return found if isinstance(found, Settings) else None


def runtime(*, create: bool = True) -> Runtime:
    """The runtime; with ``create=False`` only over an existing store and master key."""
    ctx = click.get_current_context()
    obj = ctx.find_root().ensure_object(dict)
    if "runtime" not in obj:
        config = settings()
        if not create:
            require_existing_store(config)
        new_store = _new_sqlite_store(config)
        how = where_from(config)  # before the store exists, so it says how it was chosen
        built = build_runtime(config)
        obj["runtime"] = built
        ctx.find_root().call_on_close(built.close)
        if new_store is not None:
            click.echo(f"note: created a new key store at {new_store} ({how})", err=True)
    found: Runtime = obj["runtime"]
    return found


def _new_sqlite_store(config: Settings) -> Path | None:
    path = sqlite_path(config.database_url)
    return path.resolve() if path is not None and not path.exists() else None


def where_from(config: Settings) -> str:
    """How the data dir was chosen, in words: set, found upward, or new here."""
    search = search_data_dir()
    if search.data_dir == config.data_dir:
        return f"data dir {config.data_dir}: {search.explain()}"
    return f"data dir {config.data_dir}, set by TENANTKEYS_DATA_DIR"


def local_master_key(config: Settings) -> Path | None:
    """The local provider's master key file when ``local`` is configured, else None."""
    if "local" not in config.configured_providers:
        return None
    value = config.provider_values("local").get("master_key_file")
    return Path(str(value)) if value is not None else None


def require_existing_store(config: Settings) -> None:
    """Raise TK-STORE-NOT-FOUND (or TK-LOCAL-MASTER-KEY-INVALID) rather than create either."""
    store = _new_sqlite_store(config)
    if store is not None:
        raise ConfigurationError(
            f"no key store at {store} ({where_from(config)}); run from the deployment's "
            "directory or a subdirectory, or set TENANTKEYS_DATA_DIR (or "
            "TENANTKEYS_DATABASE_URL) to its store; `tenantkeys keys create` makes a new one",
            code=ErrorCode.STORE_NOT_FOUND,
        )
    master = local_master_key(config)
    if master is not None and not master.exists():
        raise ConfigurationError(
            f"the local master key file {master.resolve()} does not exist, so no key in "
            f"{masked_url(config.database_url)} can be opened; set "
            "TENANTKEYS_LOCAL_MASTER_KEY_FILE to the master key this store was created with",
            code=ErrorCode.MASTER_KEY_INVALID,
            provider="local",
        )


def explain_failure(exc: BaseException, config: Settings | None) -> TenantKeysError | None:
    """A failure of Redis or the broker as our code, naming the URL tried (password masked).

    None when ``exc`` needs no translation (our own error that already says enough, or an
    error that is not about a connection).
    """
    import redis

    if isinstance(exc, TenantKeysError):
        return _with_urls(exc, config) if config is not None else None
    if config is None:
        return None
    url = masked_url(config.redis_url)
    if isinstance(exc, redis.AuthenticationError):
        return ConfigurationError(
            f"Redis at {url} refused the credentials ({type(exc).__name__}); fix the user or "
            "password in TENANTKEYS_REDIS_URL",
            code=ErrorCode.CACHE_UNAVAILABLE,
        )
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return CacheUnavailable(
            f"Redis does not answer at {url} ({type(exc).__name__}); start it, or set "
            "TENANTKEYS_REDIS_URL to the one the deployment uses"
        )
    if isinstance(exc, redis.ResponseError) and "DB index" in str(exc):
        return ConfigurationError(
            f"TENANTKEYS_REDIS_URL {url}: the server has no such database number",
            code=ErrorCode.CONFIG_INVALID,
        )
    return _broker_refused(exc, config)


def _broker_refused(exc: BaseException, config: Settings) -> TenantKeysError | None:
    """RabbitMQ refusing the user, password or vhost: the broker URL is wrong, not down."""
    try:
        from amqp.exceptions import AccessRefused, NotAllowed  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - py-amqp comes with kombu
        return None
    if not isinstance(exc, AccessRefused | NotAllowed):
        return None
    # The server's reply names the user or vhost, never the password.
    reply = " ".join(str(getattr(exc, "reply_text", "") or type(exc).__name__).split())[:120]
    return ConfigurationError(
        f"the broker at {masked_url(config.effective_broker_url)} refused the connection "
        f"({reply}); fix the user, password or vhost in TENANTKEYS_BROKER_URL",
        code=ErrorCode.CONFIG_INVALID,
    )


def _with_urls(error: TenantKeysError, config: Settings) -> TenantKeysError | None:
    """Name the URL a connection error tried; mask any password a message carries."""
    message = error.message
    for url in {config.redis_url, config.effective_broker_url, config.effective_result_backend}:
        message = message.replace(url, masked_url(url))
    if error.code == ErrorCode.BROKER_UNAVAILABLE and "broker at " not in message:
        message += (
            f"; broker at {masked_url(config.effective_broker_url)}, results at "
            f"{masked_url(config.effective_result_backend)}"
        )
    elif error.code == ErrorCode.CACHE_UNAVAILABLE and masked_url(config.redis_url) not in message:
        message += f"; Redis at {masked_url(config.redis_url)}"
    if message == error.message:
        return None
    return type(error)(
        message,
        code=error.code,
        provider=error.provider,
        provider_code=error.provider_code,
    )


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=None, sort_keys=False))


def version_info(version: KeyVersion) -> dict[str, Any]:
    """The public facts of a key version (never wrapped or plaintext secrets)."""
    return version.public_info()
