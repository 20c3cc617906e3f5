"""Sentinel URLs: both forms accepted and rewritten to kombu's and Celery's, bad ones refused
with one readable line, every host's password masked, and each Redis client we build (cache,
broker probe, Celery broker and results) pointed at the sentinels' primary."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.sentinel import SentinelConnectionPool

from tenantkeys.config import load_settings, masked_url
from tenantkeys.config.urls import check_url, is_sentinel, sentinel_address
from tenantkeys.keys.runtime import redis_client
from tenantkeys.queue.broker import BrokerProbe
from tenantkeys.queue.config import celery_config
from tenantkeys.queue.producer import _polling_backend

pytestmark = pytest.mark.unit

KOMBU = "sentinel://s1:26379/2;sentinel://s2:26380/2;sentinel://s3:26379/2"


@pytest.mark.parametrize(
    "given",
    [
        KOMBU,
        "sentinel://s1:26379;sentinel://s2:26380;sentinel://s3/2",
        "redis+sentinel://s1:26379;s2:26380;s3/2",
        "REDIS+SENTINEL://s1;s2:26380;s3:26379/2",
    ],
)
def test_both_forms_become_kombus_with_the_database_on_every_part(given: str) -> None:
    assert check_url(given, "redis") == KOMBU
    assert check_url(given, "broker") == KOMBU
    assert check_url(given, "result") == KOMBU
    address = sentinel_address(KOMBU)
    assert address.sentinels == (("s1", 26379), ("s2", 26380), ("s3", 26379))
    assert address.db == 2 and address.username is None and address.password is None


def test_the_login_reaches_every_part_and_is_masked_on_each() -> None:
    url = check_url("redis+sentinel://app:p%40ss@s1:26379;s2/0", "redis")
    assert url == "sentinel://app:p%40ss@s1:26379/0;sentinel://app:p%40ss@s2:26379/0"
    address = sentinel_address(url)
    assert (address.username, address.password) == ("app", "p@ss")
    assert "p@ss" not in repr(address) and "p%40ss" not in repr(address)
    assert masked_url(url) == "sentinel://app:***@s1:26379/0;sentinel://app:***@s2:26379/0"
    # A later host of the redis+sentinel form has no scheme of its own: masked all the same.
    assert masked_url("redis+sentinel://s1;:secret@s2/0") == "redis+sentinel://s1;:***@s2/0"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sentinel://s1/0;sentinel://s2/1", "different databases or logins"),
        ("sentinel://:a@s1;sentinel://:b@s2", "different databases or logins"),
        ("sentinel://s1:notaport", "port is not a number"),
        ("sentinel://s1:0", "port is not a number"),
        ("sentinel://s1;;s2", "names no sentinel"),
        ("sentinel://s1;redis://s2:6379", "every part of a Sentinel URL is a sentinel"),
        ("sentinel://s1/db1", "must be a number"),
        ("sentinel+redis://s1", "is not one of"),
    ],
)
def test_a_bad_sentinel_url_is_refused_in_one_line(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as refused:
        check_url(url, "redis")
    assert "\n" not in str(refused.value)


def test_a_refused_url_shows_no_password() -> None:
    with pytest.raises(ValueError) as refused:
        check_url("sentinel://:hunter2@s1/0;sentinel://:hunter2@s2:x/0", "redis")
    assert "hunter2" not in str(refused.value)


def test_is_sentinel_knows_both_schemes_only() -> None:
    assert is_sentinel("sentinel://a") and is_sentinel("redis+sentinel://a")
    assert not is_sentinel("redis://a") and not is_sentinel("amqp://a")


def _settings(tmp_path: Path, **values: str) -> object:
    return load_settings(
        database_url=f"sqlite:///{tmp_path / 'keys.db'}",
        data_dir=str(tmp_path),
        redis_url="redis+sentinel://:pw@127.0.0.1:26379;127.0.0.1:26380/3",
        redis_sentinel_master="tkprimary",
        embedded_redis="false",
        **values,
    )


def test_every_client_asks_the_sentinels_for_the_named_primary(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    client = redis_client(settings)  # type: ignore[arg-type]
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "tkprimary"
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "pw"
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    # The sentinels are asked without the primary's password (they may have none).
    assert all(s.connection_pool.connection_kwargs.get("password") is None for s in sentinels)
    client.close()

    config = celery_config(settings)  # type: ignore[arg-type]
    assert config["broker_url"] == config["result_backend"] == settings.redis_url  # type: ignore[attr-defined]
    assert config["broker_transport_options"]["master_name"] == "tkprimary"
    assert config["result_backend_transport_options"]["master_name"] == "tkprimary"
    # Redis broker options apply behind Sentinel too (the visibility timeout above all).
    assert "visibility_timeout" in config["broker_transport_options"]
    assert _polling_backend(config["result_backend"]).startswith(
        "tenantkeys.queue.producer:PollingSentinelBackend+sentinel://"
    )

    probe = BrokerProbe.from_settings(settings)  # type: ignore[arg-type]
    assert probe._redis is not None
    assert isinstance(probe._redis.connection_pool, SentinelConnectionPool)
    probe.close()


def test_the_worker_keeps_kombus_sentinel_transport(tmp_path: Path) -> None:
    """The fast path serves redis:// only; a sentinel:// broker gets kombu's SentinelChannel
    (docs/reliability.md#redis-sentinel says why)."""
    from kombu.transport.redis import SentinelChannel

    from workers import app as worker_app

    try:
        app = worker_app.create_app(_settings(tmp_path))  # type: ignore[arg-type]
        assert app.conf.broker_transport is None
        assert "fetch_batch" not in app.conf.broker_transport_options
        with app.connection_for_write() as conn:
            assert conn.transport.Channel is SentinelChannel
        app.close()
    finally:
        worker_app.app.set_current()
