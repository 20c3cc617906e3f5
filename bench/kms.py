"""Baselines that call a KMS per signature: 5 (naive envelope), 6 (KMS Sign), 7 (Vault Transit).

moto and OpenBao answer on loopback, so these rates are an upper bound for the real services:
a cloud KMS adds a network round trip (typically 5-20 ms inside a region) and per-account
request quotas (AWS: thousands per second, shared by the account).
"""

from __future__ import annotations

import base64
from typing import Any

from bench.env import BenchEnv
from bench.harness import PAYLOAD, Mode, ScenarioResult, percentiles, thin, timed_calls
from bench.library import build_service
from bench.pricing import kms_summary

VAULT_SIGNING_KEY = "tkbench-ed25519"


def scenario_5(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """The library with L1 off and no L2: every signature reads the row and unwraps via KMS."""
    result = ScenarioResult("5", "Naive envelope: one KMS unwrap per signature (moto)")
    tenants = env.aws_tenants(10)
    service = build_service(env.aws_settings(), ttl=0, with_l2=False)
    try:
        service.sign(tenants[0], PAYLOAD)  # connections and imports before timing
        before = service.providers.total_calls()
        rate, latencies = timed_calls(
            lambda i: service.sign(tenants[i % len(tenants)], PAYLOAD), mode.kms_requests
        )
        calls = service.providers.total_calls() - before
    finally:
        service.close()
    result.metrics = {"per_s": round(rate, 1), **percentiles(latencies)}
    result.series["latency_ms"] = [{"ms": v} for v in thin(latencies)]
    result.kms = kms_summary(calls, mode.kms_requests)
    result.headline = round(rate, 1)
    result.notes.append("moto on loopback: a real KMS adds a network round trip per call")
    return result


def scenario_6(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """One ``kms:Sign`` per signature, ECC_NIST_P256 / ECDSA_SHA_256, raw 1 KB message."""
    result = ScenarioResult("6", "KMS-native signing: one Sign per signature (moto, P-256)")
    kms = env.moto().client("kms")
    key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]

    def sign(_i: int) -> None:
        kms.sign(KeyId=key_id, Message=PAYLOAD, MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256")

    sign(0)
    rate, latencies = timed_calls(sign, mode.kms_requests)
    result.metrics = {"per_s": round(rate, 1), **percentiles(latencies)}
    result.series["latency_ms"] = [{"ms": v} for v in thin(latencies)]
    result.kms = kms_summary(mode.kms_requests, mode.kms_requests, asymmetric=True)
    result.headline = round(rate, 1)
    return result


def scenario_7(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """Vault Transit ``sign`` on OpenBao (ed25519 key): one per request, then ``batch_input``."""
    result = ScenarioResult("7", "Vault Transit signing (OpenBao): per request and batched")
    server = env.openbao()
    if server is None:
        result.status, result.reason = "skipped", "the OpenBao binary `bao` is not installed"
        return result
    client = server.client()
    client.secrets.transit.create_key(VAULT_SIGNING_KEY, key_type="ed25519", mount_point="transit")
    encoded = base64.b64encode(PAYLOAD).decode("ascii")
    path = f"transit/sign/{VAULT_SIGNING_KEY}"

    def one(_i: int) -> Any:
        return client.write_data(path, data={"input": encoded})

    one(0)
    rate, latencies = timed_calls(one, mode.kms_requests)
    result.metrics = {"per_request_per_s": round(rate, 1), **percentiles(latencies)}
    result.series["latency_ms"] = [{"ms": v} for v in thin(latencies)]
    sweep: list[dict[str, Any]] = []
    for size in mode.vault_batches:
        batch = [{"input": encoded}] * size
        jobs = max(3, mode.kms_requests // size)

        def many(_i: int, batch: list[dict[str, str]] = batch) -> Any:
            reply = client.write_data(path, data={"batch_input": batch})
            assert len(reply["data"]["batch_results"]) == len(batch)
            return reply

        job_rate, job_latencies = timed_calls(many, jobs)
        sweep.append(
            {
                "batch_size": size,
                "signatures_per_s": round(job_rate * size, 1),
                "requests": jobs,
                "request_p50_ms": percentiles(job_latencies)["p50_ms"],
            }
        )
    result.series["batch_sweep"] = sweep
    best = max(sweep, key=lambda row: row["signatures_per_s"]) if sweep else None
    result.metrics["batched_best_per_s"] = best["signatures_per_s"] if best else None
    result.metrics["batched_best_size"] = best["batch_size"] if best else None
    result.kms = {
        **kms_summary(mode.kms_requests, mode.kms_requests),
        "cost_per_million_usd": None,
        "request_kind": "Vault Transit sign (self-hosted: no per-request price)",
    }
    result.headline = round(rate, 1)
    return result
