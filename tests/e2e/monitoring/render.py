"""The shipped monitoring configuration, rendered for a test: loopback targets, short intervals.

Only time is changed, never a threshold, a label, a job name or a relabelling: the alert
expressions Prometheus evaluates are the shipped ones with their durations shortened.

* ``for:`` becomes :data:`FOR` (a few seconds: long enough to be seen pending).
* Every range window (``[5m]``) and ``offset`` becomes :data:`WINDOW`. Needed, not cosmetic:
  with ``[5m]`` the KMS error ratio keeps the outage's errors for five minutes after recovery
  (the resolution could not be watched in a test of a few minutes), and
  ``offset 30m`` reads before this Prometheus existed, so the dead-letter growth alert
  (``depth - depth offset 30m``) has no right-hand side and could never fire.
* The rules are loaded (SIGHUP) once every target has been scraped: Prometheus hands new
  targets to its scrapers at most every 5 s, so for its first seconds ``up`` is absent and
  ``absent(up{job="tenantkeys-worker"})`` holds; a ``for:`` of 5 s would then page "no
  worker" at every start. The shipped ``for: 5m`` absorbs that delay; the test's cannot.
* Scrape and evaluation intervals become :data:`INTERVAL`; Alertmanager's ``group_wait`` and
  ``group_interval`` become :data:`INTERVAL` too, and each receiver's URL points at the test's
  webhook, with the receiver's name as the path (so routing is checked as well).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "kms-alerts.yaml"
ALERTMANAGER_CONFIG = ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "tenantkeys-dashboard.json"

INTERVAL = "1s"
FOR = "5s"
WINDOW = "30s"
WINDOW_SECONDS = 30

_RANGE = re.compile(r"\[(\d+[smhdwy])\]")
_OFFSET = re.compile(r"\boffset\s+(\d+[smhdwy])\b")


def shorten(expr: str) -> str:
    """``expr`` with every range window and offset set to :data:`WINDOW`."""
    return _OFFSET.sub(f"offset {WINDOW}", _RANGE.sub(f"[{WINDOW}]", expr))


def render_rules(shipped: Path = RULES) -> dict[str, Any]:
    """The shipped rule groups with short ``for:`` and windows (nothing else changed)."""
    rules = copy.deepcopy(yaml.safe_load(shipped.read_text()))
    for group in rules["groups"]:
        group["interval"] = INTERVAL
        for rule in group["rules"]:
            rule["expr"] = shorten(rule["expr"])
            if "for" in rule:
                rule["for"] = FOR
    return dict(rules)


def render_scrape_config(
    targets: Mapping[str, list[str]],
    rules_file: Path | None,
    alertmanager: str,
    shipped: Path = SCRAPE_CONFIG,
) -> dict[str, Any]:
    """The shipped Prometheus config with each job's discovery replaced by loopback targets.

    Every shipped job must be given targets: a job silently dropped would hide a broken one.
    ``rules_file=None`` renders it without rules (to load them once targets are scraped).
    """
    config = copy.deepcopy(yaml.safe_load(shipped.read_text()))
    config["global"].update(
        scrape_interval=INTERVAL, scrape_timeout=INTERVAL, evaluation_interval=INTERVAL
    )
    if len(config["rule_files"]) != 1:
        raise AssertionError("expected one shipped rule file")
    config["rule_files"] = [str(rules_file)] if rules_file is not None else []
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    if jobs != set(targets):
        raise AssertionError(f"the test must scrape every shipped job {sorted(jobs)}")
    for job in config["scrape_configs"]:
        for discovery in [key for key in job if key.endswith("_sd_configs")]:
            del job[discovery]
        job["static_configs"] = [{"targets": list(targets[job["job_name"]])}]
    managers = config["alerting"]["alertmanagers"]
    if len(managers) != 1:
        raise AssertionError("expected one shipped alertmanagers entry")
    managers[0]["static_configs"] = [{"targets": [alertmanager]}]
    return dict(config)


def render_alertmanager_config(webhook: str, shipped: Path = ALERTMANAGER_CONFIG) -> dict[str, Any]:
    """The shipped routing tree, every receiver posting to ``webhook``/<receiver name>."""
    config = copy.deepcopy(yaml.safe_load(shipped.read_text()))

    def shorten_route(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = INTERVAL
        for child in route.get("routes", []):
            shorten_route(child)

    shorten_route(config["route"])
    for receiver in config["receivers"]:
        hooks = receiver.get("webhook_configs")
        if not hooks:
            raise AssertionError(f"receiver {receiver['name']} has no webhook to redirect")
        for hook in hooks:
            hook["url"] = f"{webhook.rstrip('/')}/{receiver['name']}"
    return dict(config)


def write_yaml(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    return path
