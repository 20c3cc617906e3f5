"""A second process for cache tests: signs on request, printing the kid and KMS call count.

Run as ``python -m tests.integration.signer_process DB_URL REDIS_URL PREFIX MASTER_KEY``;
reads one tenant id per line on stdin, answers one JSON line per request.
"""

from __future__ import annotations

import json
import sys

import redis

from tenantkeys.providers.local import LocalProvider
from tests.helpers import StatementCounter, make_service


def main() -> None:
    db_url, redis_url, prefix, master = sys.argv[1:5]
    service = make_service(
        db_url, LocalProvider(master), redis_client=redis.Redis.from_url(redis_url), prefix=prefix
    )
    assert service._listener is not None and service._listener.wait_ready()
    counter = StatementCounter(service.store.engine)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        tenant = line.strip()
        sig = service.sign(tenant, b"payload")
        print(
            json.dumps(
                {
                    "kid": sig.kid,
                    "kms_calls": service.providers.total_calls(),
                    "db_statements": counter.count,
                }
            ),
            flush=True,
        )
    service.close()


if __name__ == "__main__":
    main()
