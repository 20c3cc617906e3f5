"""``tenantkeys bench``: the benchmark suite (the harness lives in ``bench/``).

The harness is not part of the installed package (it needs the loopback KMS servers of the
test suite), so it is imported from the checkout: the current directory or the one this
module was installed from in editable mode.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from tenantkeys.errors import ConfigurationError, ErrorCode


def _harness(module: str) -> ModuleType:
    """Import ``bench.<module>`` from the source checkout."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (root / "bench" / "suite.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            break
    try:
        return importlib.import_module(f"bench.{module}")
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"the benchmark harness needs a source checkout with bench/ and tests/ ({exc}); "
            "run it from the repository root",
            code=ErrorCode.CONFIG_INVALID,
        ) from exc


@click.command("bench")
@click.option("--quick/--full", default=True, help="Seconds per scenario (CI) or the real sizes.")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    help="Scenario ids to run (repeat or comma-separate, e.g. --scenario 1,2); default all.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench/results"),
    show_default=True,
    help="Directory for results-<mode>.json and the PNG charts.",
)
@click.option("--profile", is_flag=True, help="Also record py-spy and pyinstrument profiles.")
@click.option(
    "--docs",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Update the generated block of this Markdown page (docs/performance.md).",
)
@click.option("--redis-url", default=None, help="Redis to use (default: DB 8 on localhost).")
@click.option("--no-charts", is_flag=True, help="Skip the PNG charts.")
def bench_command(
    quick: bool,
    scenarios: tuple[str, ...],
    out: Path,
    profile: bool,
    docs: Path | None,
    redis_url: str | None,
    no_charts: bool,
) -> None:
    """Signatures per second, latency, KMS calls and cost, against the baselines."""
    suite = _harness("suite")
    harness = _harness("harness")
    wanted = [part for value in scenarios for part in value.split(",")]
    try:
        selected = suite.select(wanted)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scenario") from None
    options: dict[str, Any] = {
        "mode": harness.QUICK if quick else harness.FULL,
        "scenarios": selected,
        "out": out,
        "profile": profile,
        "charts": not no_charts,
        "progress": lambda line: click.echo(line, err=True),
    }
    if redis_url:
        options["redis_url"] = redis_url
    started = time.perf_counter()
    results = suite.run(suite.RunOptions(**options))
    report = _harness("report")
    if docs is not None:
        report.update_docs(results, docs)
    click.echo(report.table(results))
    click.echo(
        f"\nresults: {report.results_path(out, results['meta']['mode'])} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    failed = [sid for sid, found in results["scenarios"].items() if found["status"] == "error"]
    if failed:
        click.echo(f"scenarios with errors: {', '.join(failed)}", err=True)
        sys.exit(1)
