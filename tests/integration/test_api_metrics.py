"""Scrape the real ``/metrics`` of a running ``tenantkeys api``: every metric an alert or the
dashboard names must be exported, with a sample (a family without samples never fires).

The worker's half (a real ``tenantkeys worker``) is in ``tests/e2e/test_observability.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tenantkeys.config import load_settings
from tenantkeys.keys.rotation import RotationSweep
from tenantkeys.keys.runtime import build_runtime
from tests.integration.test_alert_rules import (
    PROMETHEUS_METRICS,
    dashboard_exprs,
    load_alerts,
    metric_names,
)
from tests.integration.test_api_support import api_process, environment

pytestmark = pytest.mark.integration
#: The API tests' fixtures: api_redis_url (own Redis DB), api_prefix, api_overrides, api_settings.
pytest_plugins = ["tests.integration.test_api_support"]


def used_metrics() -> dict[str, set[str]]:
    """metric name -> the alerts and dashboard panels that use it."""
    used: dict[str, set[str]] = {}
    sources = [(rule["alert"], rule["expr"]) for rule in load_alerts()]
    sources += [("dashboard", expr) for expr in dashboard_exprs()]
    for source, expr in sources:
        for name in metric_names(expr) - PROMETHEUS_METRICS:
            used.setdefault(name, set()).add(source)
    return used


def sample_names(text: str) -> set[str]:
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def prepare_state(overrides: dict[str, Any]) -> None:
    """What a running deployment has: a key (oldest age, overdue) and a finished sweep."""
    runtime = build_runtime(load_settings(**overrides))
    try:
        runtime.service.create_keys("acme")
        RotationSweep(runtime.service.store, runtime.redis, runtime.settings.redis_prefix).run(
            lambda version: None
        )
    finally:
        runtime.close()


def test_used_metrics_parser_sees_the_alerts() -> None:
    used = used_metrics()
    assert "tenantkeys_queue_depth" in used and "tenantkeys_kms_requests_total" in used


@pytest.mark.parametrize("multiprocess", [False, True], ids=["single", "multiproc-dir"])
def test_api_exports_every_metric_alerts_and_dashboard_use(
    api_overrides: dict[str, Any], tmp_path: Path, multiprocess: bool
) -> None:
    prepare_state(api_overrides)
    env = environment(api_overrides)
    if multiprocess:  # as under a process manager: values live in files, merged at scrape
        directory = tmp_path / "prom"
        directory.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    with api_process(env, tmp_path / "api.log") as api:
        status, body = api.get("/metrics")
    assert status == 200, body
    exported = sample_names(body.decode())
    missing = {name: sorted(src) for name, src in used_metrics().items() if name not in exported}
    assert not missing, f"used but not exported by the API: {missing}"
    text = body.decode()
    assert 'tenantkeys_circuit_breaker_state{provider="local"} 0.0' in text
    assert 'tenantkeys_queue_depth{queue="tenantkeys.sign"} 0.0' in text
    assert "tenantkeys_dead_letter_depth 0.0" in text
    assert "acme" not in text  # no tenant id in any label
