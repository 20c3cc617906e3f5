"""Jobs: the contract every producer and worker shares (:mod:`.contract`, :mod:`.messages`),
the runner that decides what happens to a job (:mod:`.runner`), and the dead-letter store with
its one replay (:mod:`.deadletters`).

This face re-exports the contract only: importing it (as the producer client does) pulls in no
database, cache or KMS code.
"""

from __future__ import annotations

from tenantkeys.jobs.contract import (
    COMPACT_BATCH_FIELD,
    CREATE_KEYS,
    EXCHANGE,
    KEYS_QUEUE,
    MAINTENANCE_QUEUE,
    MAX_BATCH_ITEMS,
    QUEUES,
    REVOKE_KEY,
    ROTATE_KEY,
    ROTATION_SWEEP,
    ROUTES,
    SIGN,
    SIGN_BATCH,
    SIGN_QUEUE,
    is_compact_batch,
    parse_arguments,
)
from tenantkeys.jobs.messages import (
    ENQUEUED_AT_HEADER,
    argsrepr,
    decode_payload,
    describe_payload,
    encode_payload,
    enqueued_at,
    error_from,
    failed,
    failure_detail,
    job_failure,
    json_safe,
    ok,
    redact,
    tenant_of,
    unwrap,
)

__all__ = [
    "COMPACT_BATCH_FIELD",
    "CREATE_KEYS",
    "ENQUEUED_AT_HEADER",
    "EXCHANGE",
    "KEYS_QUEUE",
    "MAINTENANCE_QUEUE",
    "MAX_BATCH_ITEMS",
    "QUEUES",
    "REVOKE_KEY",
    "ROTATE_KEY",
    "ROTATION_SWEEP",
    "ROUTES",
    "SIGN",
    "SIGN_BATCH",
    "SIGN_QUEUE",
    "argsrepr",
    "decode_payload",
    "describe_payload",
    "encode_payload",
    "enqueued_at",
    "error_from",
    "failed",
    "failure_detail",
    "is_compact_batch",
    "job_failure",
    "json_safe",
    "ok",
    "parse_arguments",
    "redact",
    "tenant_of",
    "unwrap",
]
