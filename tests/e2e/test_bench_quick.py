"""``tenantkeys bench --quick`` runs every scenario and writes well-formed results.

Nothing here asserts a speed: CI machines differ. It checks that each scenario ran (or said
why it skipped), that the numbers are numbers, and that the JSON, charts and table exist.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.redis_databases import lease_database

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {str(n) for n in range(1, 14)}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")
    out = tmp_path_factory.mktemp("bench")
    leased = lease_database("bench")  # its workers' queues carry no prefix
    try:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench",
                "--quick",
                "--out",
                str(out),
                "--redis-url",
                leased.url,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=880,
            check=False,
        )
    finally:
        leased.release()
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results-quick.json").read_text())
    return results, out, run.stdout


def test_every_scenario_ran_or_said_why(quick_run: tuple[dict, Path, str]) -> None:
    results, _, _ = quick_run
    assert set(results["scenarios"]) == SCENARIOS
    for scenario_id, found in results["scenarios"].items():
        assert found["status"] in {"ok", "skipped"}, (scenario_id, found["reason"])
        if found["status"] == "skipped":
            assert found["reason"], scenario_id
        else:
            assert isinstance(found["headline"], int | float), scenario_id
            assert found["headline"] > 0, scenario_id


def test_machine_facts_and_assumptions(quick_run: tuple[dict, Path, str]) -> None:
    meta = quick_run[0]["meta"]
    assert meta["mode"] == "quick"
    machine = meta["machine"]
    assert machine["cpu_count"] >= 1 and machine["cpu_model"] and machine["python"]
    assert machine["packages"]["cryptography"]
    assert meta["pricing_assumptions"]["symmetric_usd_per_10k_requests"] == 0.03


def test_kms_counts_and_costs(quick_run: tuple[dict, Path, str]) -> None:
    scenarios = quick_run[0]["scenarios"]
    for scenario_id in ("5", "6"):
        kms = scenarios[scenario_id]["kms"]
        assert kms["calls_per_million"] == pytest.approx(1_000_000)  # one call per signature
    assert scenarios["6"]["kms"]["cost_per_million_usd"] == pytest.approx(15.0)
    steady = scenarios["8"]["metrics"]["as_fast_as_possible"]
    assert steady["kms"]["calls"] <= steady["tenants"]  # one unwrap per tenant in one TTL
    assert 0 < steady["l1_hit_rate"] <= 1


def test_celery_series_are_complete(quick_run: tuple[dict, Path, str]) -> None:
    scenarios = quick_run[0]["scenarios"]
    if scenarios["3"]["status"] == "ok":
        series = scenarios["3"]["series"]
        for form in ("sweep_redis", "sweep_redis_compact"):  # JSON items, compact msgpack
            sweep = series[form]
            assert [row["batch_size"] for row in sweep] == [1, 10, 100], form
            assert all(row["signatures_per_s"] > 0 for row in sweep), form
            assert all(row["failed"] == 0 for row in sweep), form
        assert scenarios["3"]["metrics"]["redis"]["failed"] == 0
        assert scenarios["3"]["metrics"]["batched_best_form"] in {"items", "compact"}
    if scenarios["10"]["status"] == "ok":
        levels = scenarios["10"]["series"]["levels"]
        assert [level["fraction"] for level in levels] == [0.25, 0.5, 0.75]
        assert all(level["p99_ms"] >= level["p50_ms"] > 0 for level in levels)
        runs = scenarios["10"]["series"]["runs"]
        assert len(runs) == scenarios["10"]["metrics"]["runs"] == 2  # quick mode
        p99s = sorted(run["p99_ms"] for run in runs)
        assert p99s[0] <= scenarios["10"]["metrics"]["p99_ms"] <= p99s[-1]


def test_scale_out_model_has_every_stage(quick_run: tuple[dict, Path, str]) -> None:
    found = quick_run[0]["scenarios"]["13"]
    if found["status"] != "ok":
        pytest.skip(found["reason"])  # reported by test_every_scenario_ran_or_said_why
    redis_runs = found["metrics"]["redis"]
    for run in (redis_runs["one_process"], redis_runs["two_processes"]):
        for kind in ("compact_1000", "single_jobs"):
            cpu = run[kind]["cpu_us"]
            stages = {"producer", "collector", "consumer", "pool", "redis_main_thread"}
            assert stages <= set(cpu), (kind, cpu)
            # The stages that work hardest did work (the kernel counts CPU in 10 ms ticks, and a
            # quick run's result reader may stay under one), and the total is their sum.
            busy = stages - {"collector"}
            assert all(cpu[stage] > 0 for stage in busy), (kind, cpu)
            assert all(cpu[stage] >= 0 for stage in stages), (kind, cpu)
            assert cpu["total"] == pytest.approx(sum(v for k, v in cpu.items() if k != "total"))
    model = found["metrics"]["redis_model"]
    assert model["binding"] in model["bounds_for_two_processes"]
    assert model["predicted_two_processes_per_s"] == min(model["bounds_for_two_processes"].values())


def test_charts_and_table(quick_run: tuple[dict, Path, str]) -> None:
    results, out, stdout = quick_run
    assert len(results["charts"]) == 3
    for name in results["charts"]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and "|---" not in line]
    assert len(rows) == 1 + len(SCENARIOS)  # header + one row per scenario
