"""The alert rules and the dashboard against promtool, the runbooks and the exported metrics.

An alert on a metric nobody exports never fires, so every metric an alert or a dashboard panel
names must be one that ``tenantkeys.telemetry`` exports; every alert must fire in one promtool
case and stay silent in another.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tenantkeys import telemetry
from tests.conftest import service_missing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
RULES = PROMETHEUS_DIR / "kms-alerts.yaml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "kms-alerts.test.yaml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "tenantkeys-dashboard.json"
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_URL = re.compile(
    r"^https://github\.com/tenantkeys/tenantkeys/blob/main/docs/runbooks/([a-z0-9-]+\.md)$"
)
SEVERITIES = {"critical", "warning", "info"}
#: Metrics Prometheus itself produces for every target.
PROMETHEUS_METRICS = {"up"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
PROMQL_WORDS |= {"and", "or", "unless", "inf", "nan"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def load_alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_exprs() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for panel in panels:
            yield from (t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    tokens = re.findall(r"(?<![\w.$])([A-Za-z_:][\w:]*)\b(?!\s*\()", text)
    return {token for token in tokens if token.lower() not in PROMQL_WORDS}


def exported_names() -> set[str]:
    """Sample names tenantkeys exports: family names with their type's suffixes."""
    names = set(telemetry.STATE_GAUGES)
    for metric in telemetry.METRICS:
        for family in metric.describe():
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def test_metric_name_parser_finds_names_and_skips_promql_words() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (provider, le) (rate(a_bucket{x="y"}[5m])))'
        " / ignoring(job) b offset 30m > 1 and on(instance) up == 0 or vector(0) unless c:rec"
    )
    assert metric_names(expr) == {"a_bucket", "b", "up", "c:rec"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        service_missing("promtool (scripts/install-test-servers)")
    assert path is not None
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_check_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(load_alerts())} rules found" in result.stdout


def test_promtool_check_scrape_config(promtool: str) -> None:
    result = run(promtool, "check", "config", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_loads_the_rules_and_scrapes_every_job() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"tenantkeys-worker", "tenantkeys-api", "flower"}
    assert jobs["tenantkeys-worker"]["dns_sd_configs"][0]["port"] == 9808
    assert jobs["tenantkeys-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]


@pytest.mark.parametrize("alert", load_alerts(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_summary_description_and_runbook(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    match = RUNBOOK_URL.match(annotations["runbook_url"])
    assert match, f"runbook_url must point to docs/runbooks/*.md: {annotations['runbook_url']}"
    assert (RUNBOOKS / match.group(1)).is_file(), f"missing runbook docs/runbooks/{match[1]}"


def test_alert_names_are_unique() -> None:
    names = [alert["alert"] for alert in load_alerts()]
    assert len(names) == len(set(names))


def test_topic_runbooks_exist() -> None:
    for name in ("dead-letters", "cache-incident", "rotation-failure", "provider-outage"):
        assert (RUNBOOKS / f"{name}.md").is_file(), name


def test_runbook_links_resolve() -> None:
    pages = sorted(RUNBOOKS.glob("*.md"))
    assert len(pages) >= len(load_alerts()) + 4
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"


@pytest.mark.parametrize(
    ("source", "expr"),
    [(rule["alert"], rule["expr"]) for rule in load_alerts()]
    + [("dashboard", expr) for expr in dashboard_exprs()],
)
def test_every_metric_used_is_exported(source: str, expr: str) -> None:
    used = metric_names(expr)
    assert used, f"{source}: no metric found in {expr!r}"
    unknown = used - exported_names() - PROMETHEUS_METRICS
    assert not unknown, f"{source} uses metrics telemetry.py does not export: {sorted(unknown)}"


def test_every_alert_has_a_firing_and_a_silent_promtool_case() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {alert["alert"] for alert in load_alerts()}
    assert alerts - firing == set(), "alerts without a firing case"
    assert alerts - silent == set(), "alerts without a silent case"
    assert (firing | silent) - alerts == set(), "cases for alerts that do not exist"


def test_dashboard_uses_the_datasource_variable_and_unique_panel_ids() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
