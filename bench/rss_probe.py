"""``python -m bench.rss_probe N``: RSS of a fresh process before and after N keys enter L1.

Reads the run's settings from ``TENANTKEYS_*`` (set by the harness) and prints one JSON line.
A separate process, so nothing the harness allocated is counted.
"""

from __future__ import annotations

import gc
import json
import sys

import psutil

from bench.env import tenant_name
from bench.harness import PAYLOAD
from tenantkeys.config import load_settings
from tenantkeys.keys.runtime import build_runtime

MB = 2**20


def main() -> None:
    count = int(sys.argv[1])
    process = psutil.Process()
    runtime = build_runtime(load_settings(), migrate=False)
    service = runtime.service
    service.sign(tenant_name(0), PAYLOAD)  # imports and connections paid before the baseline
    gc.collect()
    before = process.memory_info().rss
    for index in range(count):
        service.sign(tenant_name(index), PAYLOAD)
    gc.collect()
    after = process.memory_info().rss
    entries = len(service.l1)
    runtime.close()
    print(
        json.dumps(
            {
                "tenants": count,
                "l1_entries": entries,
                "rss_before_mb": round(before / MB, 1),
                "rss_after_mb": round(after / MB, 1),
                "growth_mb": round((after - before) / MB, 1),
                "bytes_per_key": round((after - before) / max(1, entries)),
            }
        )
    )


if __name__ == "__main__":
    main()
