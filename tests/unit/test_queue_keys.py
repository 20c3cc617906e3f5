"""Celery's own keys carry no prefix, so a standard Celery client finds the queues and results;
the names the key migration moves are kombu's own."""

from __future__ import annotations

import pytest

from tenantkeys.config import load_settings
from tenantkeys.queue.config import celery_config
from tenantkeys.queue.migrate import PRIORITY_SEP, PRIORITY_STEPS, queue_keys

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/3", "sentinel://127.0.0.1:26379/3", "amqp://u:p@h//"]
)
def test_no_key_prefix_on_the_broker_or_the_results(url: str) -> None:
    settings = load_settings(broker_url=url, redis_prefix="deployment")
    config = celery_config(settings)
    for options in (
        config["broker_transport_options"],
        config["result_backend_transport_options"],
    ):
        assert "global_keyprefix" not in options
        assert "deployment" not in repr(options)


def test_the_priority_lists_are_kombus() -> None:
    from kombu.transport.redis import PRIORITY_STEPS as KOMBU_STEPS
    from kombu.transport.redis import Channel

    assert list(PRIORITY_STEPS) == KOMBU_STEPS and Channel.sep == PRIORITY_SEP
    assert queue_keys("q") == ["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]


def test_the_worker_logs_what_it_moved_and_starts_anyway_when_it_cannot(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tenantkeys.errors import ErrorCode, TransientError
    from tenantkeys.queue.migrate import KeyMigration
    from workers import app as worker_app

    moved = KeyMigration("tk", False, {"tenantkeys.sign": 5}, unacked=2, results=3)
    monkeypatch.setattr(worker_app, "migrate_keys", lambda settings: moved)
    with caplog.at_level("INFO", logger=worker_app.log.name):
        worker_app._move_old_keys()
    assert "moved 5 queued job(s), 2 unacked record(s), 3 result(s)" in caplog.text

    def down(settings: object) -> KeyMigration:
        raise TransientError("the broker cannot be reached", code=ErrorCode.BROKER_UNAVAILABLE)

    monkeypatch.setattr(worker_app, "migrate_keys", down)
    caplog.clear()
    with caplog.at_level("WARNING", logger=worker_app.log.name):
        worker_app._move_old_keys()  # does not raise: the worker starts
    assert "TK-BROKER-UNAVAILABLE" in caplog.text and "migrate-keys" in caplog.text
