"""AWS KMS list prices used for the cost columns (assumptions; see docs/performance.md).

Prices are per request, us-east-1 list prices: symmetric requests (GenerateDataKey, Decrypt,
Encrypt) $0.03 per 10,000; asymmetric ``Sign`` with an ECC key $0.15 per 10,000. Key-month
storage ($1 per key per month) is left out: it does not scale with signatures.
"""

from __future__ import annotations

from typing import Any

SYMMETRIC_USD_PER_10K = 0.03
ASYMMETRIC_ECC_SIGN_USD_PER_10K = 0.15
MILLION = 1_000_000

ASSUMPTIONS = {
    "symmetric_usd_per_10k_requests": SYMMETRIC_USD_PER_10K,
    "asymmetric_ecc_sign_usd_per_10k_requests": ASYMMETRIC_ECC_SIGN_USD_PER_10K,
    "source": "AWS KMS list prices (us-east-1); key storage not included",
}


def kms_summary(calls: int, signatures: int, *, asymmetric: bool = False) -> dict[str, Any]:
    """KMS calls and their cost, scaled to one million signatures."""
    price = ASYMMETRIC_ECC_SIGN_USD_PER_10K if asymmetric else SYMMETRIC_USD_PER_10K
    per_million = calls * MILLION / signatures if signatures else 0.0
    return {
        "calls": calls,
        "signatures": signatures,
        "calls_per_million": round(per_million, 1),
        "cost_per_million_usd": round(per_million * price / 10_000, 4),
        "price_usd_per_10k": price,
        "request_kind": "asymmetric Sign (ECC)" if asymmetric else "symmetric",
    }
