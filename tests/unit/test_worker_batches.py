"""The signing batch's fast path: results stored and messages acked together, batches that
end in a hook (finished or lost), never in silence."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
from celery import Celery
from celery_batches import SimpleRequest

from tenantkeys import telemetry
from tenantkeys.config import load_settings
from tenantkeys.queue.config import celery_config
from workers.fastpath import acks, results
from workers.fastpath.batches import FencedBatches
from workers.fastpath.transport import Transport

pytestmark = pytest.mark.unit


def _backend(url: str = "redis://127.0.0.1:1/0") -> Any:
    app = Celery("t", set_as_current=False)
    app.conf.update(
        result_backend=url,
        result_backend_transport_options={"global_keyprefix": "tk:"},
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_expires=60,
    )
    backend = app.backend
    backend.__dict__["client"] = fakeredis.FakeRedis()  # a cached property on the backend
    return backend


def _request(job_id: str, **extra: Any) -> SimpleRequest:
    request = SimpleRequest(job_id, "tenantkeys.sign", (), {}, {}, "w1", False, None, None, {})
    for name, value in extra.items():
        setattr(request, name, value)
    return request


def test_each_result_is_stored_under_its_id_as_mark_as_done_would() -> None:
    backend = _backend()
    pubsub = backend.client.pubsub()
    pubsub.subscribe(backend.get_key_for_task("a"))
    pubsub.get_message(timeout=1)  # the subscription itself
    results.store(
        backend, [(_request("a"), "SUCCESS", {"ok": True}), (_request("b"), "SUCCESS", {})]
    )
    assert backend.get_task_meta("a")["result"] == {"ok": True}
    assert backend.get_task_meta("b")["status"] == "SUCCESS"
    assert 0 < backend.client.ttl(backend.get_key_for_task("b")) <= 60
    published = pubsub.get_message(timeout=1)
    assert published is not None and json.loads(published["data"])["task_id"] == "a"

    backend.mark_as_done("c", {"ok": True}, request=_request("c"))
    ours = json.loads(backend.client.get(backend.get_key_for_task("a")))
    celerys = json.loads(backend.client.get(backend.get_key_for_task("c")))
    assert set(ours) == set(celerys)


def test_a_stored_success_is_not_replaced_by_a_duplicate_run() -> None:
    backend = _backend()
    results.store(backend, [(_request("a"), "SUCCESS", {"ok": True, "result": 1})])
    results.store(
        backend,
        [(_request("a"), "SUCCESS", {"ok": True, "result": 2}), (_request("b"), "SUCCESS", 3)],
    )
    assert backend.get_task_meta("a")["result"] == {"ok": True, "result": 1}
    assert backend.get_task_meta("b")["result"] == 3


def test_other_backends_and_chords_store_job_by_job() -> None:
    class Recording:
        def __init__(self) -> None:
            self.stored: list[str] = []

        def mark_as_done(self, job_id: str, result: Any, request: Any = None) -> None:
            self.stored.append(job_id)

    other = Recording()
    results.store(other, [(_request("a"), "SUCCESS", 1), (_request("b"), "SUCCESS", 2)])  # type: ignore[arg-type]
    assert other.stored == ["a", "b"]
    backend = _backend()
    backend.on_chord_part_return = lambda *args, **kwargs: None
    results.store(backend, [(_request("a", chord={"x": 1}), "SUCCESS", 1)])
    assert backend.get_task_meta("a")["result"] == 1


def test_a_failed_job_is_stored_as_celery_failure_that_any_client_reads() -> None:
    """FAILURE with the error's class and ``[one line, detail]``: Celery rebuilds the class;
    the raw JSON names the code for a client in another language; a later success replaces it."""
    from tenantkeys import jobs
    from tenantkeys.errors import KmsPermissionError

    backend = _backend()
    error = KmsPermissionError("needs kms:Decrypt", provider="aws")
    failure = jobs.job_failure(jobs.failed(error, dead_letter="d1")["error"])
    results.store(backend, [(_request("a"), "FAILURE", failure)])
    meta = backend.get_task_meta("a")
    assert meta["status"] == "FAILURE"
    rebuilt = meta["result"]
    assert isinstance(rebuilt, KmsPermissionError) and rebuilt.code == "TK-KMS-ACCESS-DENIED"
    raw = json.loads(backend.client.get(backend.get_key_for_task("a")))
    assert raw["result"]["exc_type"] == "KmsPermissionError"
    one_line, detail = raw["result"]["exc_message"]
    assert one_line.startswith("TK-KMS-ACCESS-DENIED: ") and detail["dead_letter"] == "d1"
    assert jobs.failure_detail(raw["result"]) == detail == jobs.failure_detail(rebuilt)
    results.store(backend, [(_request("a"), "SUCCESS", {"ok": True})])  # a replay succeeded
    assert backend.get_task_meta("a")["status"] == "SUCCESS"


class _Request:
    def __init__(self, message: Any) -> None:
        self.message = message
        self.acknowledged = False
        self.acked_alone = 0

    def acknowledge(self) -> None:
        self.acked_alone += 1
        self.acknowledged = True


class _Message:
    acknowledged = False

    def __init__(self, channel: object) -> None:
        self.channel = channel


def test_acks_on_other_transports_go_one_by_one() -> None:
    channel = object()  # not a Redis channel (RabbitMQ, say)
    requests = [_Request(_Message(channel)) for _ in range(3)]
    requests[0].acknowledged = True
    acks.acknowledge(requests)
    assert [r.acked_alone for r in requests] == [0, 1, 1]


def test_throughput_settings_reach_the_celery_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TASK_SENT_EVENTS", "WORKER_TASK_EVENTS", "SIGN_BATCH_INTERVAL_SECONDS"):
        monkeypatch.delenv(f"TENANTKEYS_{name}", raising=False)
    settings = load_settings()
    assert settings.sign_batch_interval_seconds == 0.005  # the p99 <= 20 ms target needs it
    conf = celery_config(settings)
    assert conf["task_send_sent_event"] is False and conf["worker_send_task_events"] is True
    monkeypatch.setenv("TENANTKEYS_TASK_SENT_EVENTS", "true")
    monkeypatch.setenv("TENANTKEYS_WORKER_TASK_EVENTS", "false")
    conf = celery_config(load_settings())
    assert conf["task_send_sent_event"] is True and conf["worker_send_task_events"] is False


def test_cached_label_children_still_refuse_unknown_values() -> None:
    telemetry.record_cache_lookup("l1", "hit")  # binds the child
    telemetry.record_signature("ok", 0.001)
    with pytest.raises(ValueError, match="metric label layer="):
        telemetry.record_cache_lookup("l3", "hit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metric label outcome="):
        telemetry.record_signature("fine", None)  # type: ignore[arg-type]


def test_a_redis_broker_gets_the_batched_fetch_transport() -> None:
    from workers import app as worker_app

    try:
        on_redis = worker_app.create_app(
            load_settings(broker_url="redis://127.0.0.1:6379/12", broker_fetch_batch=32)
        )
        # Named by its path (the setting travels as JSON in `celery inspect conf` and Flower's
        # worker pages); kombu resolves it to the class.
        assert on_redis.conf.broker_transport == "workers.fastpath.transport:Transport"
        assert on_redis.connection_for_write().get_transport_cls() is Transport
        json.dumps(dict(on_redis.conf.table(with_defaults=False)), default=str)
        assert on_redis.conf.broker_transport_options["fetch_batch"] == 32
        on_rabbit = worker_app.create_app(
            load_settings(broker_url="amqp://guest:guest@127.0.0.1:5672//")
        )
        assert on_rabbit.conf.broker_transport is None
        assert "fetch_batch" not in on_rabbit.conf.broker_transport_options
    finally:
        worker_app.app.set_current()


@pytest.mark.parametrize(("visibility", "expire"), [(10, 5), (200, 100), (3600, 300)])
def test_a_dead_restorer_blocks_restores_for_half_a_visibility_timeout(
    visibility: int, expire: int
) -> None:
    settings = load_settings(
        broker_url="redis://127.0.0.1:6379/12",
        broker_visibility_timeout_seconds=visibility,
        retry_cap_seconds=1,
        task_soft_time_limit_seconds=2,
        task_time_limit_seconds=3,
    )
    options = celery_config(settings)["broker_transport_options"]
    assert options["unacked_mutex_expire"] == expire


class _Pool:
    """Records what a batch hands to the pool; the test plays the pool's callbacks."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any, dict[str, Any]]] = []

    def apply_async(self, target: Any, args: Any, **options: Any) -> None:
        self.calls.append((target, args, options))


class _Lost(_Request):
    def __init__(self, job_id: str) -> None:
        super().__init__(_Message(object()))
        self.id = job_id
        self.name = "t.batch"
        self._payload = ((), {"n": job_id}, {})
        self.delivery_info: dict[str, Any] = {}
        self.hostname = "w1"
        self.reply_to = self.correlation_id = None
        self.request_dict: dict[str, Any] = {}
        self.rejected: list[bool] = []

    def reject(self, requeue: bool = False) -> None:
        self.rejected.append(requeue)


def _batch_task(**attributes: Any) -> Any:
    app = Celery("t", set_as_current=False)
    events: list[tuple[str, list[str], Any]] = []

    class Recording(FencedBatches):  # type: ignore[misc]
        name = "t.batch"

        def on_batch_finished(self, requests: Any, result: Any) -> None:
            events.append(("finished", [r.id for r in requests], result))

        def on_batch_lost(self, requests: Any, reason: Any) -> None:
            events.append(("lost", [r.id for r in requests], reason))

    for key, value in attributes.items():
        setattr(Recording, key, value)
    task = app.register_task(Recording())
    task._pool = _Pool()
    return task, events


def test_a_batch_ends_in_the_finished_or_the_lost_hook() -> None:
    from celery_batches.trace import apply_batches_task

    task, events = _batch_task(batch_soft_time_limit=5.0, batch_time_limit=9.0)
    requests = [_Lost("a"), _Lost("b")]
    task.flush(requests)
    target, args, options = task._pool.calls[0]
    assert target is apply_batches_task and args[0] is task
    assert [simple.kwargs for simple in args[1][0]] == [{"n": "a"}, {"n": "b"}]
    assert (options["soft_timeout"], options["timeout"]) == (5.0, 9.0)
    options["callback"](["a"])  # what the task returned
    options["error_callback"]("WorkerLostError")
    assert events == [
        ("finished", ["a", "b"], ["a"]),
        ("lost", ["a", "b"], "WorkerLostError"),
    ]


def test_by_default_a_lost_batch_queues_each_job_again_and_limits_are_the_workers() -> None:
    app = Celery("t", set_as_current=False)
    task = app.register_task(type("Plain", (FencedBatches,), {"name": "t.plain"})())
    task._pool = _Pool()
    requests = [_Lost("a"), _Lost("b")]
    task.flush(requests)
    _, _, options = task._pool.calls[0]
    assert (options["soft_timeout"], options["timeout"]) == (None, None)  # the pool's defaults
    options["error_callback"](RuntimeError("process died"))
    assert [r.rejected for r in requests] == [[True], [True]]
    options["callback"](None)  # the finished hook acks (one by one off Redis)
    assert [r.acked_alone for r in requests] == [1, 1]


def test_each_strategy_rearms_the_flush_timer() -> None:
    task, _ = _batch_task()

    class Timer:
        def __init__(self) -> None:
            self.cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    armed = Timer()
    task._tref = armed
    consumer = type(
        "Consumer",
        (),
        {
            "pool": _Pool(),
            "hostname": "w1",
            "connection_errors": (),
            "event_dispatcher": None,
            "timer": None,
        },
    )()
    handler = task.Strategy(task, task.app, consumer)
    # The old timer died with the old connection: cancelled and forgotten, so the next job
    # arms a new one on this consumer's timer.
    assert callable(handler) and armed.cancelled and task._tref is None
    assert task._pool is consumer.pool


class _Applied:
    """What a pool's ``apply_async`` returns: it can tell whether its batch is over."""

    def __init__(self) -> None:
        self.over = False

    def ready(self) -> bool:
        return self.over


class _Prefork(_Pool):
    """A pool of ``num_processes`` processes that calls back on the consumer's thread."""

    def __init__(self, processes: int = 2) -> None:
        super().__init__()
        self.num_processes = processes

    def apply_async(self, target: Any, args: Any, **options: Any) -> _Applied:  # type: ignore[override]
        super().apply_async(target, args, **options)
        return _Applied()


def _buffered(task: Any, *job_ids: str) -> list[_Lost]:
    requests = [_Lost(job_id) for job_id in job_ids]
    for request in requests:
        request.eta = None  # type: ignore[attr-defined]
        task._buffer.put(request)
    return requests


def _flushed(task: Any) -> list[list[str]]:
    return [[simple.id for simple in args[1][0]] for _, args, _ in task._pool.calls]


def test_while_every_process_runs_a_batch_the_buffer_waits_for_the_first_one_back() -> None:
    """Batches grow with the load: the tick keeps the buffer while both processes are busy,
    and a batch coming back flushes it at once (not one small batch per tick, queued)."""
    task, events = _batch_task(flush_every=100)
    task._pool = _Prefork(2)
    _buffered(task, "a")
    task._do_flush()
    _buffered(task, "b")
    task._do_flush()
    assert _flushed(task) == [["a"], ["b"]]  # one batch per process
    _buffered(task, "c", "d")
    task._do_flush()
    task._do_flush()  # ticks while both are busy: held, not queued behind them
    _buffered(task, "e")
    task._do_flush()
    assert _flushed(task) == [["a"], ["b"]]
    _, _, first = task._pool.calls[0]
    first["callback"](["a"])
    # The freed process gets everything that waited, as one batch, before "a" is acked.
    assert _flushed(task) == [["a"], ["b"], ["c", "d", "e"]]
    assert events == [("finished", ["a"], ["a"])]
    _, _, second = task._pool.calls[1]
    second["error_callback"]("WorkerLostError")  # a lost batch frees its process too
    _buffered(task, "f")
    task._do_flush()
    assert _flushed(task)[-1] == ["f"]


def test_a_full_buffer_is_flushed_even_while_every_process_is_busy() -> None:
    task, _ = _batch_task(flush_every=3)
    task._pool = _Prefork(1)
    _buffered(task, "a")
    task._do_flush()
    _buffered(task, "b", "c")
    task._do_flush()
    assert _flushed(task) == [["a"]]
    _buffered(task, "d")
    task._do_flush()
    assert _flushed(task) == [["a"], ["b", "c", "d"]]


def test_a_batch_whose_pool_result_is_over_never_holds_the_buffer() -> None:
    """Its callback is due; if it never came (a pool bug), the buffer must not wait for ever."""
    task, _ = _batch_task()
    task._pool = _Prefork(1)
    applied: list[_Applied] = []
    original = task._pool.apply_async

    def recording(*args: Any, **kwargs: Any) -> _Applied:
        applied.append(original(*args, **kwargs))
        return applied[-1]

    task._pool.apply_async = recording
    _buffered(task, "a")
    task._do_flush()
    _buffered(task, "b")
    task._do_flush()
    assert _flushed(task) == [["a"]]
    applied[0].over = True
    task._do_flush()
    assert _flushed(task) == [["a"], ["b"]]


@pytest.mark.parametrize("pool", [_Pool(), type("Threads", (_Pool,), {"num_processes": None})()])
def test_pools_without_a_process_count_flush_on_every_tick_as_celery_batches_does(
    pool: _Pool,
) -> None:
    """The threads pool calls back from its own threads and the solo pool inline: no hold, and
    no flush from a callback."""
    task, _ = _batch_task()
    task._pool = pool
    for job_id in "abc":
        _buffered(task, job_id)
        task._do_flush()
    assert _flushed(task) == [["a"], ["b"], ["c"]]
    _buffered(task, "d")
    task._pool.calls[0][2]["callback"](["a"])
    assert _flushed(task) == [["a"], ["b"], ["c"]]  # "d" waits for the tick


def test_a_round_of_messages_is_flushed_once_when_the_event_loop_has_delivered_it() -> None:
    task, _ = _batch_task()
    task._pool = _Prefork(2)

    class Hub:
        def __init__(self) -> None:
            self.soon: list[Any] = []

        def call_soon(self, callback: Any) -> None:
            self.soon.append(callback)

    hub = Hub()
    handler = task._flushing_after_round(lambda job_id: _buffered(task, job_id), hub)
    for job_id in "abc":  # one take's messages, delivered in one event-loop round
        handler(job_id)
    assert _flushed(task) == [] and len(hub.soon) == 1  # one flush for the round
    hub.soon.pop()()
    assert _flushed(task) == [["a", "b", "c"]]
    handler("d")
    assert len(hub.soon) == 1  # the next round schedules its own
    hub.soon.pop()()
    assert _flushed(task) == [["a", "b", "c"], ["d"]]


def test_the_strategy_flushes_after_each_round_only_on_an_event_loop_with_processes() -> None:
    task, _ = _batch_task()

    def consumer(pool: Any, hub: Any) -> Any:
        return type(
            "Consumer",
            (),
            {
                "pool": pool,
                "hostname": "w1",
                "connection_errors": (),
                "event_dispatcher": None,
                "timer": None,
                "hub": hub,
            },
        )()

    hub = type("Hub", (), {"call_soon": lambda self, callback: None})()
    with_round = task.Strategy(task, task.app, consumer(_Prefork(2), hub))
    assert with_round.__qualname__.endswith("_flushing_after_round.<locals>.on_message")
    for pool, loop in ((_Prefork(2), None), (_Pool(), hub)):
        plain = task.Strategy(task, task.app, consumer(pool, loop))
        assert plain.__qualname__.endswith("Strategy.<locals>.task_message_handler")


def test_a_batch_the_pool_refused_holds_no_process() -> None:
    task, _ = _batch_task()
    task._pool = _Prefork(1)

    def closed(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("pool closed")

    task._pool.apply_async = closed
    _buffered(task, "a")
    with pytest.raises(RuntimeError):
        task._do_flush()
    task._pool = _Prefork(1)
    _buffered(task, "b")
    task._do_flush()  # not held by the batch that never reached a process
    assert _flushed(task) == [["b"]]


def test_batch_events_go_from_a_thread_in_order_and_shutdown_sends_what_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from workers import outcomes

    sent: list[tuple[str | None, str]] = []
    release = threading.Event()
    threads: set[str] = set()

    def slow_broker(app: Any, hostname: str | None, events: Any) -> None:
        release.wait(10)
        threads.add(threading.current_thread().name)
        sent.append((hostname, events[0][1]["uuid"]))

    monkeypatch.setattr(outcomes, "send_events", slow_broker)
    app = Celery("t", set_as_current=False)
    app.conf.worker_send_task_events = True
    sender = outcomes.EventSender(app, limit=3)
    for job in ("a", "b", "c", "d", "e"):  # the batch returns at once, the broker is slow
        sender.send("w1", [("task-succeeded", {"uuid": job})])
    assert sent == [] and sender.dropped >= 1  # past the limit: dropped, counted
    release.set()
    sender.close()  # the process's shutdown: everything queued is sent first
    assert [job for _, job in sent][:3] == ["a", "b", "c"] and threads == {"tk-events"}
    assert len(sent) + sender.dropped == 5

    app.conf.worker_send_task_events = False
    sender.send("w1", [("task-succeeded", {"uuid": "f"})])
    assert sender._thread is None  # events off: no thread, nothing queued


def test_a_returning_batch_is_acked_even_when_the_next_one_cannot_be_handed_over() -> None:
    task, events = _batch_task()
    task._pool = _Prefork(1)
    _buffered(task, "a")
    task._do_flush()
    _buffered(task, "b")
    _, _, first = task._pool.calls[0]

    def closing(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("pool closing")

    task._pool.apply_async = closing
    first["callback"](["a"])  # the flush of "b" fails inside the callback
    assert events == [("finished", ["a"], ["a"])]
