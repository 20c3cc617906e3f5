"""The Grafana dashboard's panel queries, with Grafana's variables substituted, run live."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.monitoring.render import DASHBOARD
from tests.e2e.monitoring.servers import Server

#: What Grafana puts in place of its variables. ``$__rate_interval`` is
#: max(4 x scrape interval, $__interval + scrape interval); with the shipped 15 s scrape
#: interval and any range up to a few hours that is 1m.
VARIABLES = {"$__rate_interval": "1m", "${__rate_interval}": "1m"}


@dataclass(frozen=True)
class Target:
    panel: str
    ref: str
    expr: str

    @property
    def name(self) -> str:
        return f"{self.panel} [{self.ref}]"


def targets(path: Path = DASHBOARD) -> list[Target]:
    """Every query of every panel (rows' nested panels too), variables substituted."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[Target]:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    expr = target["expr"]
                    for variable, value in VARIABLES.items():
                        expr = expr.replace(variable, value)
                    if "$" in expr:
                        raise AssertionError(f"{panel['title']}: unknown variable in {expr!r}")
                    yield Target(panel["title"], target.get("refId", "?"), expr)
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(path.read_text())["panels"]))


def run(prometheus: Server, target: Target) -> list[float]:
    """The values of the target's instant query now (NaN included); [] when it has no data."""
    reply = prometheus.get("/api/v1/query", query=target.expr)
    if reply["status"] != "success":
        raise AssertionError(f"{target.name}: {reply}")
    data = reply["data"]
    if data["resultType"] == "scalar":
        return [float(data["result"][1])]
    return [float(sample["value"][1]) for sample in data["result"]]


def has_data(values: list[float]) -> bool:
    """Data a panel can draw: at least one finite number (NaN, 0/0, draws nothing useful)."""
    return any(math.isfinite(value) for value in values)


def query_all(
    prometheus: Server, no_data_expected: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Run every target now: (a line of values per target, the targets without data).

    Targets named in ``no_data_expected`` (with the reason) are not counted as empty.
    """
    shown: dict[str, str] = {}
    empty: dict[str, str] = {}
    for target in targets():
        values = run(prometheus, target)
        shown[target.name] = f"{len(values)} series: " + ", ".join(f"{v:.4g}" for v in values[:4])
        if not has_data(values) and target.name not in no_data_expected:
            empty[target.name] = f"{target.expr} -> {values}"
    return shown, empty
