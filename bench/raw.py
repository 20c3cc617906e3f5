"""Scenario 1: raw Ed25519 signing of 1 KB, in one process and in two: this machine's limit."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cryptography.hazmat.primitives.asymmetric import ed25519

from bench.env import REPO_ROOT, BenchEnv
from bench.harness import PAYLOAD, Mode, ScenarioResult, rate_loop, timed_calls
from tenantkeys import signing


def _raw_rate(seconds: float, start_at: float) -> float:
    """Sign PAYLOAD in a loop for ``seconds`` from wall-clock ``start_at`` (all start together)."""
    key = ed25519.Ed25519PrivateKey.generate()
    key.sign(PAYLOAD)
    time.sleep(max(0.0, start_at - time.time()))
    return rate_loop(lambda: key.sign(PAYLOAD), seconds)


def _jws_rate(seconds: float) -> float:
    material, secret = signing.generate("EdDSA")
    secret[:] = bytes(len(secret))
    header = {"alg": "EdDSA", "kid": material.kid, signing.TENANT_HEADER: "bench-00000"}
    return rate_loop(lambda: signing.sign_compact(material, header, PAYLOAD), seconds)


def parallel_raw_rate(processes: int, seconds: float) -> list[float]:
    """Per-process rates of ``processes`` concurrent raw signers (fresh interpreters)."""
    start_at = time.time() + 2.0  # after every interpreter has started
    code = f"from bench.raw import _raw_rate; print(_raw_rate({seconds!r}, {start_at!r}))"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    children = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(processes)
    ]
    rates = []
    for child in children:
        out, _ = child.communicate(timeout=seconds + 60)
        if child.returncode != 0:
            raise RuntimeError(f"raw signer exited with {child.returncode}")
        rates.append(float(out.strip().splitlines()[-1]))
    return rates


def scenario_1(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """Raw ``Ed25519PrivateKey.sign`` (1 and 2 processes) and the JWS wrapping on top of it."""
    result = ScenarioResult("1", "Raw Ed25519 signing (1 KB), 1 and 2 processes")
    one = _raw_rate(mode.duration, time.time())
    two = parallel_raw_rate(2, mode.duration)
    jws = _jws_rate(mode.duration)
    key = ed25519.Ed25519PrivateKey.generate()
    _, latencies = timed_calls(lambda _i: key.sign(PAYLOAD), 2_000)
    latencies.sort()
    result.metrics = {
        "one_process_per_s": round(one, 1),
        "two_processes_per_s": round(sum(two), 1),
        "two_processes_each_per_s": [round(r, 1) for r in two],
        "scaling_2p_over_1p": round(sum(two) / one, 2),
        "jws_compact_one_process_per_s": round(jws, 1),
        "jws_overhead_fraction": round(1 - jws / one, 3),
        "sign_p50_us": round(latencies[len(latencies) // 2] * 1000, 2),
    }
    result.headline = round(sum(two), 1)
    result.notes.append("headline = two processes; ratios 'x S1' use it")
    return result
