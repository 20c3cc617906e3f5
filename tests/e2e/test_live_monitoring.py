"""The shipped alerts, proven on a live Prometheus and Alertmanager.

A real Prometheus (Debian's ``prometheus``) scrapes a real ``tenantkeys worker``, the ops API
and Flower with the shipped scrape config and alert rules, rendered for loopback ports and
short intervals (``tests/e2e/monitoring/render.py`` says what is changed and why: time only).
A real Alertmanager (Debian's ``prometheus-alertmanager``) with the shipped routing tree posts
to a webhook inside the test. The KMS is moto's AWS KMS behind a :class:`TcpProxy`.

1. Before the first rotation sweep, the sweep alert fires; a sweep resolves it.
2. KMS outage (proxy off) under load: the KMS error-ratio and circuit-breaker alerts go
   pending, fire and reach the webhook; jobs that need the KMS end in the dead-letter store,
   and both dead-letter alerts fire. Recovery (proxy on, replay through the API): all resolve.
3. Worker stopped with a backlog published: worker-down and queue-backlog fire; a new worker
   drains the queue and both resolve.
4. Every Grafana panel query is run against this Prometheus during load and must return data.

The observed alert timeline is printed (and written next to the fault report).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tenantkeys import jobs
from tenantkeys.queue.broker import BrokerProbe
from tenantkeys.testing.moto_kms import REGION, MotoKms
from tests.conftest import REDIS_HOST, REDIS_PORT, free_port, port_open, service_missing
from tests.e2e.harness import Deployment, TcpProxy, wait_for
from tests.e2e.monitoring import dashboard, render
from tests.e2e.monitoring.load import Load
from tests.e2e.monitoring.servers import (
    Server,
    Webhook,
    binary,
    start_alertmanager,
    start_prometheus,
)
from tests.e2e.monitoring.timeline import Alerts, AlertWatch
from tests.e2e.monitoring.timeline import render as render_timeline
from tests.e2e.test_observability import cli, start_worker

pytestmark = pytest.mark.e2e
AWS_ROOT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
TIMELINE = Path(os.environ.get("TMPDIR", "/tmp")) / "tenantkeys-alert-timeline.txt"
CACHED = ["c1", "c2", "c3"]
UNCACHED = ["u1", "u2", "u3"]
BACKLOG = 1_200  # above the queue-backlog alert's 1000

#: Panel queries that cannot return data in this test, with the reason. Empty: every panel does.
NO_DATA_EXPECTED: dict[str, str] = {}


@pytest.fixture
def stack(
    tmp_path: Path, moto_kms: MotoKms, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """moto behind a proxy that can cut it off, and a deployment using it (its own Redis DB)."""
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    binary("prometheus")
    binary("prometheus-alertmanager")
    for name, value in AWS_ROOT.items():
        monkeypatch.setenv(name, value)
    proxy = TcpProxy(moto_kms.port)
    proxy.start()
    deployment = Deployment(
        tmp_path,
        embedded_redis=False,
        worker_metrics_port=free_port(),
        kms_provider="aws",
        aws_kms_key_id=moto_kms.key_id,
        aws_region=REGION,
        aws_endpoint_url=proxy.url,
        breaker_fail_max=3,
        breaker_reset_timeout_seconds=3,
        admin_token_sha256=hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),
    )
    try:
        yield {"deployment": deployment, "proxy": proxy}
    finally:
        proxy.stop()
        deployment.stop()


def spawn_http(deployment: Deployment, name: str, argv: list[str], port: int, path: str) -> None:
    process = deployment.spawn(name, argv, AWS_ROOT)

    def answering() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited: {deployment.log(name)[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    wait_for(answering, 60, f"{name} to answer", 0.2)


def query(prometheus: Server, expr: str) -> list[float]:
    reply = prometheus.get("/api/v1/query", query=expr)
    return [float(sample["value"][1]) for sample in reply["data"]["result"]]


def by_job(prometheus: Server, expr: str) -> dict[str, float]:
    reply = prometheus.get("/api/v1/query", query=expr)
    return {s["metric"]["job"]: float(s["value"][1]) for s in reply["data"]["result"]}


@dataclass
class Monitoring:
    """The webhook, Alertmanager, Prometheus and the alert watch of one test."""

    tmp: Path
    targets: dict[str, list[str]]
    webhook: Webhook
    alertmanager: Server
    prometheus: Server
    prometheus_started: float
    watch: AlertWatch
    alerts: Alerts

    @property
    def config(self) -> Path:
        return self.tmp / "prometheus.yml"

    @classmethod
    def start(cls, tmp: Path, targets: dict[str, list[str]], started: float) -> Monitoring:
        """Alertmanager and Prometheus (scraping ``targets``, no rules yet), watched."""
        webhook = Webhook(started)
        config = render.render_alertmanager_config(webhook.url)
        alertmanager = start_alertmanager(render.write_yaml(tmp / "alertmanager.yml", config), tmp)
        manager = f"127.0.0.1:{alertmanager.port}"
        scrape = render.render_scrape_config(targets, None, manager)
        try:
            prometheus = start_prometheus(render.write_yaml(tmp / "prometheus.yml", scrape), tmp)
        except BaseException:
            alertmanager.stop()
            webhook.stop()
            raise
        watch = AlertWatch(prometheus, started)
        watch.start()
        return cls(
            tmp,
            targets,
            webhook,
            alertmanager,
            prometheus,
            time.monotonic(),
            watch,
            Alerts(watch, webhook),
        )

    def load_rules(self) -> list[str]:
        """Once every target is scraped, load the rendered rules; the scrape errors seen."""
        errors: set[str] = set()

        def all_up() -> bool:
            found = self.prometheus.get("/api/v1/targets")["data"]["activeTargets"]
            errors.update(
                f"{t['labels']['job']}: {t['lastError']}" for t in found if t["lastError"]
            )
            return [t["health"] for t in found] == ["up"] * len(self.targets)

        wait_for(all_up, 60, f"Prometheus to scrape {sorted(self.targets)}")
        self.watch.mark("Prometheus scrapes the worker, the API and Flower")
        rules = render.write_yaml(self.tmp / "rules.yml", render.render_rules())
        manager = f"127.0.0.1:{self.alertmanager.port}"
        scrape = render.render_scrape_config(self.targets, rules, manager)
        render.write_yaml(self.config, scrape)
        self.prometheus.reload()
        groups = lambda: self.prometheus.get("/api/v1/rules")["data"]["groups"]  # noqa: E731
        wait_for(groups, 30, "the rules to load")
        return sorted(errors)

    def stop(self) -> None:
        self.watch.stop()
        self.prometheus.stop()
        self.alertmanager.stop()
        self.webhook.stop()


def test_alerts_fire_reach_alertmanager_and_resolve_and_every_panel_has_data(
    stack: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment: Deployment = stack["deployment"]
    proxy: TcpProxy = stack["proxy"]
    started = time.monotonic()
    runtime = deployment.runtime()  # keys made here: no worker process has them in L1
    try:
        for tenant in CACHED + UNCACHED:
            runtime.service.create_keys(tenant, ["signing"])
    finally:
        runtime.close()

    worker = start_worker(deployment, "worker-1", AWS_ROOT)
    api_port, flower_port = free_port(), free_port()
    spawn_http(deployment, "api", cli("api", "--port", str(api_port)), api_port, "/health/live")
    spawn_http(
        deployment, "flower", cli("flower", "--port", str(flower_port)), flower_port, "/metrics"
    )

    # The first scrape of an exporter opens its state probe's sources (key store, Redis,
    # broker): slower than the test's 1 s scrape timeout on a loaded machine. Done here once,
    # as the 10 s production timeout would absorb it, so no start-up blip reads as "down".
    for port in (deployment.settings.worker_metrics_port, api_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            assert b"tenantkeys_queue_depth" in reply.read()

    targets = {
        "tenantkeys-worker": [f"127.0.0.1:{deployment.settings.worker_metrics_port}"],
        "tenantkeys-api": [f"127.0.0.1:{api_port}"],
        "flower": [f"127.0.0.1:{flower_port}"],
    }
    live = Monitoring.start(tmp_path, targets, started)
    observed: dict[str, Any] = {}
    prometheus, watch, alerts = live.prometheus, live.watch, live.alerts
    cached, uncached = Load(deployment, CACHED), Load(deployment, UNCACHED)
    try:
        observed["scrape errors before all targets were up"] = live.load_rules()
        watch.mark("alert rules loaded; cached-tenant load starts")
        cached.start()

        # 1. No sweep has run yet: the sweep alert fires; Beat's task resolves it.
        alerts.fire("TenantKeysRotationSweepNotRun", 0.0)
        with deployment.client() as client:
            client.wait(client.send(jobs.ROTATION_SWEEP, {}), 60)
        watch.mark("rotation sweep ran")
        swept = watch.now()
        alerts.resolve("TenantKeysRotationSweepNotRun", swept)

        # The dead-letter growth rule compares with 30 s ago: Prometheus must have that history.
        wait_for(
            lambda: time.monotonic() - live.prometheus_started > render.WINDOW_SECONDS + 2,
            60,
            "Prometheus to hold one window of history",
        )

        # 2. KMS outage under load.
        proxy.stop()
        outage = watch.now()
        watch.mark("KMS outage: proxy in front of moto stopped; uncached-tenant load starts")
        uncached.start()
        wait_for(lambda: deployment.breaker_state("aws") == "open", 60, "the breaker to open")
        for name in ("TenantKeysKmsErrorRatioHigh", "TenantKeysCircuitBreakerOpen"):
            observed[f"{name} fired"] = alerts.fire(name, outage, provider="aws")
        for name in ("TenantKeysDeadLettersPresent", "TenantKeysDeadLettersGrowing"):
            observed[f"{name} fired"] = alerts.fire(name, outage)
        observed["dead letters"] = deployment.deadletters().depth()
        observed["jobs dead-lettered during the outage"] = uncached.failed
        assert observed["dead letters"] > 0 and uncached.failed > 0
        assert sum(query(prometheus, 'tenantkeys_kms_requests_total{outcome="transient"}')) > 0
        # Not asserted at 0: with two pool processes a "cached" tenant may be in one L1 only
        # (tests/e2e/test_kms_outage.py proves the L1 guarantee with one process).
        observed["cached-tenant jobs failed during the outage"] = dict(cached.errors)

        proxy.start()
        recovered = watch.now()
        watch.mark("KMS back: proxy started")
        wait_for(lambda: deployment.breaker_state("aws") == "closed", 60, "the breaker to close")
        replay = urllib.request.Request(
            f"http://127.0.0.1:{api_port}/api/admin/dlq/replay",
            data=b'{"all": true}',
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(replay, timeout=60) as reply:
            assert reply.status == 200
        watch.mark("dead letters replayed through the ops API")
        wait_for(lambda: deployment.deadletters().depth() == 0, 60, "the replay to empty the store")
        for name in ("TenantKeysKmsErrorRatioHigh", "TenantKeysCircuitBreakerOpen"):
            observed[f"{name} resolved"] = alerts.resolve(name, recovered, provider="aws")
        for name in ("TenantKeysDeadLettersPresent", "TenantKeysDeadLettersGrowing"):
            observed[f"{name} resolved"] = alerts.resolve(name, recovered)

        # 3. A stopped worker, with a backlog published while it is down.
        cached.stop()
        uncached.stop()
        down = watch.now()
        watch.mark("worker stopping (SIGTERM)")
        Deployment.kill(worker, signal.SIGTERM)
        watch.mark("worker stopped; backlog being published")
        with deployment.client() as client:
            backlog = client.submit_many((CACHED[i % 3], b"backlog") for i in range(BACKLOG))
        published = time.monotonic()
        depth = BrokerProbe.from_settings(deployment.settings).queue_depths()[jobs.SIGN_QUEUE]
        observed["queue depth with the worker down"] = depth
        assert depth > 1000
        observed["TenantKeysWorkerDown fired"] = alerts.fire("TenantKeysWorkerDown", down)
        observed["TenantKeysQueueBacklog fired"] = alerts.fire(
            "TenantKeysQueueBacklog", down, queue=jobs.SIGN_QUEUE
        )
        # The worker is down: the depth the backlog alert read came from the API's exporter.
        observed["queue depth series while the worker is down"] = by_job(
            prometheus, f'tenantkeys_queue_depth{{queue="{jobs.SIGN_QUEUE}"}}'
        )
        assert set(observed["queue depth series while the worker is down"]) == {"tenantkeys-api"}
        early = [
            t
            for t in watch.transitions("TenantKeysWorkerDown")
            if t.at < down and t.state == "firing"
        ]
        assert early == [], f"worker-down alert fired while the worker ran: {early}"

        restarted = watch.now()
        watch.mark("a new worker starting")
        start_worker(deployment, "worker-2", AWS_ROOT)
        watch.mark("the new worker is ready")
        # Each backlog job waited at least this long, enqueue to result.
        observed["backlog wait, lower bound (s)"] = waited = round(time.monotonic() - published, 1)
        cached.start()
        for job in backlog:
            job.result(timeout=120)
        watch.mark(f"backlog of {BACKLOG} signed")
        observed["TenantKeysWorkerDown resolved"] = alerts.resolve(
            "TenantKeysWorkerDown", restarted
        )
        observed["TenantKeysQueueBacklog resolved"] = alerts.resolve(
            "TenantKeysQueueBacklog", restarted, queue=jobs.SIGN_QUEUE
        )

        # 4. Every panel, during load (a rotation too, so the rotation panel has an event).
        with deployment.client() as client:
            client.rotate_key(CACHED[0], "signing", timeout=60)
        wait_for(
            lambda: sum(query(prometheus, 'tenantkeys_rotations_total{outcome="ok"}')) > 0,
            30,
            "the rotation to be scraped",
        )
        watch.mark("every dashboard panel queried")
        panels, empty = dashboard.query_all(prometheus, NO_DATA_EXPECTED)
        # The latency panel must show the backlog's wait, not saturate at a top bucket.
        p99 = next(
            t for t in dashboard.targets() if t.panel.startswith("Signing latency") and t.ref == "C"
        )
        assert waited <= 10 or max(dashboard.run(prometheus, p99)) > 10, panels[p99.name]
        observed["panel queries"] = len(panels)
        observed["panels"] = "".join(f"\n      {k}: {v}" for k, v in panels.items())
        assert not empty, f"panels without data: {empty}"
        assert query(prometheus, 'up{job="flower"}') == [1.0]
        assert watch.transitions("TenantKeysRotationOverdue") == []  # nothing was overdue
        failed = "count_over_time(up[1h]) - sum_over_time(up[1h])"
        observed["failed scrapes by job"] = by_job(prometheus, failed)
    finally:
        cached.stop()
        uncached.stop()
        watch.stop()
        text = render_timeline(watch, live.webhook)
        text += "\n  observed:\n" + "\n".join(f"    {k}: {v}" for k, v in observed.items())
        TIMELINE.write_text(text + "\n")
        with capsys.disabled():
            print("\n" + text)
        live.stop()


def test_shipped_alertmanager_config_passes_amtool_and_routes_by_severity() -> None:
    """The file compose mounts is valid, and its tree sends critical and warning apart."""
    checked = subprocess.run(
        [binary("amtool"), "check-config", str(render.ALERTMANAGER_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = render.render_alertmanager_config("http://127.0.0.1:1")
    route = config["route"]
    assert route["receiver"] == "tenantkeys-warning"
    assert route["routes"][0]["matchers"] == ['severity="critical"']
    assert route["routes"][0]["receiver"] == "tenantkeys-critical"
    assert all(hook["send_resolved"] for r in config["receivers"] for hook in r["webhook_configs"])
