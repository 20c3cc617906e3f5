"""Profiles behind the performance notes: pyinstrument in process, py-spy on live workers.

* ``library``: pyinstrument over warm-L1 ``KeyService.sign`` (scenario 2's loop).
* ``worker`` and ``producer``: py-spy (sampling, native-free) on a Celery worker and its pool
  processes, and on this process publishing, during a burst of single-payload jobs.

Each profile is saved (text / collapsed stacks) and summarised as the top functions by
samples, so the numbers in docs/performance.md can be traced to a file.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from bench.env import BenchEnv
from bench.harness import PAYLOAD, Mode, rate_loop

TOP = 20
_LINE = re.compile(r":\d+\)$")  # same function, any line: one entry


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def summarise_collapsed(path: Path, top: int = TOP) -> dict[str, Any]:
    """Top functions by self samples and by inclusive samples of a collapsed-stack file."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "share": round(n / total, 4)}
            for name, n in counter.most_common(top)
        ]

    return {"samples": total, "self": share(own), "inclusive": share(inclusive)}


def profile_library(env: BenchEnv, mode: Mode, out: Path) -> dict[str, Any]:
    """pyinstrument over the warm-L1 library signing loop."""
    from pyinstrument import Profiler

    from bench.library import build_service

    tenant = env.tenants(1)[0]
    service = build_service(env.settings(), with_l2=env.redis_ok)
    try:
        service.sign(tenant, PAYLOAD)
        profiler = Profiler(interval=0.0002)
        profiler.start()
        rate = rate_loop(lambda: service.sign(tenant, PAYLOAD), max(2.0, mode.duration))
        profiler.stop()
    finally:
        service.close()
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    (out / "library-pyinstrument.txt").write_text(text, encoding="utf-8")
    (out / "library-pyinstrument.html").write_text(profiler.output_html(), encoding="utf-8")
    return {
        "tool": "pyinstrument",
        "signatures_per_s_under_profiler": round(rate, 1),
        "file": "library-pyinstrument.txt",
    }


def _record(
    pid: int, seconds: float, target: Path, *, subprocesses: bool
) -> subprocess.Popen[bytes]:
    binary = _py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install 'tenantkeys[bench]')")
    argv = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(target),
        "--nonblocking",
    ]
    if subprocesses:
        argv.append("--subprocesses")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def profile_worker(env: BenchEnv, mode: Mode, out: Path) -> dict[str, Any]:
    """py-spy on a worker (with its pool) and on this producer during single-job bursts."""
    from bench.celery_scenarios import TENANTS, _ready, single_burst
    from bench.celery_stack import Collector, workers

    seconds = max(5.0, mode.duration)
    tenants = env.tenants(TENANTS)
    with workers(env) as w:
        _ready(w, tenants)
        collector = Collector(w)
        worker_pid = w.stack.children[0].pid
        spies = [
            _record(worker_pid, seconds, out / "worker-py-spy.txt", subprocesses=True),
            _record(os.getpid(), seconds, out / "producer-py-spy.txt", subprocesses=False),
        ]
        stop = threading.Event()
        bursts = 0
        try:
            while any(spy.poll() is None for spy in spies):
                single_burst(w, collector, tenants, 500)
                bursts += 1
        finally:
            stop.set()
            collector.close()
            for spy in spies:
                spy.wait(timeout=60)
    summary: dict[str, Any] = {"tool": "py-spy", "bursts_of_500_jobs": bursts}
    for name in ("worker", "producer"):
        path = out / f"{name}-py-spy.txt"
        summary[name] = summarise_collapsed(path) if path.exists() else {"missing": True}
        summary[name]["file"] = path.name
    return summary


def profile_all(env: BenchEnv, mode: Mode, out: Path) -> dict[str, Any]:
    """Every profile this machine can take; a failing one is reported, not raised."""
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name, fn in (("library", profile_library), ("worker", profile_worker)):
        try:
            results[name] = fn(env, mode, out)
        except Exception as exc:  # a profile is a bonus; the run's numbers stand without it
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return results
