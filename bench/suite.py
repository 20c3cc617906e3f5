"""Runs the selected scenarios in order, records each outcome, writes results and charts.

A scenario that fails is recorded as ``error`` with its reason and the run goes on: one broken
service must not hide the numbers of the others.
"""

from __future__ import annotations

import importlib
import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.env import DEFAULT_REDIS_URL, BenchEnv
from bench.harness import Mode, ScenarioResult, machine_facts
from bench.pricing import ASSUMPTIONS

log = logging.getLogger(__name__)
Scenario = Callable[[BenchEnv, Mode], ScenarioResult]

#: scenario id -> "module:function", in run order (in-process first, then Celery).
SCENARIOS: dict[str, str] = {
    "1": "bench.raw:scenario_1",
    "2": "bench.library:scenario_2",
    "8": "bench.library:scenario_8",
    "9": "bench.library:scenario_9",
    "5": "bench.kms:scenario_5",
    "6": "bench.kms:scenario_6",
    "7": "bench.kms:scenario_7",
    "4": "bench.celery_scenarios:scenario_4",
    "3": "bench.celery_scenarios:scenario_3",
    "10": "bench.celery_scenarios:scenario_10",
    "11": "bench.celery_scenarios:scenario_11",
    "12": "bench.front_door:scenario_12",
    "13": "bench.scaleout:scenario_13",
}
ALL = tuple(SCENARIOS)


def _load(target: str) -> Scenario:
    module, _, name = target.partition(":")
    found: Scenario = getattr(importlib.import_module(module), name)
    return found


@dataclass
class RunOptions:
    mode: Mode
    scenarios: tuple[str, ...] = ALL
    out: Path = Path("bench/results")
    redis_url: str = DEFAULT_REDIS_URL
    profile: bool = False
    charts: bool = True
    progress: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)


def select(wanted: Iterable[str]) -> tuple[str, ...]:
    """Scenario ids in run order; raises ValueError on an unknown id."""
    chosen = {w.strip() for w in wanted if w.strip()}
    unknown = chosen - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(ALL)}")
    return tuple(s for s in ALL if s in chosen) or ALL


def run(options: RunOptions) -> dict[str, Any]:
    """Run, write ``results-<mode>.json`` (and charts) under ``options.out``, return results."""
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "mode": options.mode.name,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_facts(),
            "pricing_assumptions": ASSUMPTIONS,
            "payload_bytes": 1024,
            "mode_sizes": options.mode.__dict__,
        },
        "scenarios": {},
    }
    env = BenchEnv(options.mode, options.redis_url)
    try:
        for scenario_id in options.scenarios:
            options.progress(f"scenario {scenario_id} ...")
            result = _run_one(scenario_id, env)
            results["scenarios"][scenario_id] = result.to_dict()
            shown = f"{result.headline} {result.unit}" if result.headline is not None else ""
            options.progress(
                f"scenario {scenario_id}: {result.status} {shown} {result.reason}".rstrip()
                + f" ({result.seconds:.1f} s)"
            )
        if options.profile:
            from bench.profiling import profile_all

            options.progress("profiling ...")
            results["profiles"] = profile_all(env, options.mode, options.out / "profiles")
    finally:
        env.close()
    results["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    from bench.report import write_results

    write_results(results, options.out, charts=options.charts)
    return results


def _run_one(scenario_id: str, env: BenchEnv) -> ScenarioResult:
    began = time.perf_counter()
    try:
        scenario = _load(SCENARIOS[scenario_id])
        result = scenario(env, env.mode)
    except Exception as exc:  # recorded, the run goes on
        log.debug("scenario %s failed", scenario_id, exc_info=True)
        result = ScenarioResult(scenario_id, f"scenario {scenario_id}", status="error")
        result.reason = f"{type(exc).__name__}: {exc}"[:500]
        result.notes.append(traceback.format_exc(limit=3)[-1500:])
    result.seconds = round(time.perf_counter() - began, 2)
    return result
