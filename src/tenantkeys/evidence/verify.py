"""Offline verification of an evidence bundle: one verdict per signature.

Nothing here reads settings, a key store, Redis or the network: the bundle's JWKS snapshot is
the only key source (its kids are checked against the thumbprints of its keys). A signature by
a key revoked later is valid only when a timestamp proves it existed before the revocation;
otherwise its verdict is ``revoked-no-proof`` (docs/evidence.md argues why that is no pass).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tenantkeys import signing
from tenantkeys.errors import ErrorCode, TenantKeysError, VerificationError
from tenantkeys.evidence.bundle import Bundle, KeyEntry, SignatureRecord, read_bundle
from tenantkeys.evidence.format import BundleReader
from tenantkeys.evidence.signing_time import (
    TimestampUnchecked,
    proven_signing_time,
    proves_before,
)

VALID = "valid"
INVALID = "invalid"
REVOKED_NO_PROOF = "revoked-no-proof"
PAYLOAD_MISSING = "payload-missing"


@dataclass(frozen=True)
class Verdict:
    """What one signature of a bundle proves; only ``valid`` is a pass."""

    member: str
    verdict: str
    reason: str
    tenant_id: str
    kid: str
    key_status: str | None = None
    code: str | None = None
    timestamp_time: str | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == VALID

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        code = f" [{self.code}]" if self.code else ""
        return f"{self.member}: {self.verdict}{code}: {self.reason}"


def verify_file(
    path: Path,
    *,
    payloads: Mapping[str, bytes] | None = None,
    trust: Sequence[bytes] | None = None,
) -> list[Verdict]:
    """Open ``path`` within the caps and judge every signature in it."""
    with BundleReader.open(path) as reader:
        bundle = read_bundle(reader)
    return verify_bundle(bundle, payloads=payloads, trust=trust)


def verify_bundle(
    bundle: Bundle,
    *,
    payloads: Mapping[str, bytes] | None = None,
    trust: Sequence[bytes] | None = None,
) -> list[Verdict]:
    """``payloads`` (by SHA-256) stand in for those a hashes-only bundle left out; ``trust``
    (TSA CA certificates, PEM) replaces the bundle's own."""
    given = dict(payloads or {})
    anchors = list(trust) if trust else bundle.tsa_certificates
    return [_judge(name, record, bundle, given, anchors) for name, record in bundle.signatures]


def _judge(
    name: str,
    record: SignatureRecord,
    bundle: Bundle,
    payloads: Mapping[str, bytes],
    trust: Sequence[bytes],
) -> Verdict:
    facts = {"member": name, "tenant_id": record.tenant_id, "kid": record.kid}
    key = bundle.keys.get(record.kid)
    status = key.status if key is not None else None
    try:
        payload = _payload(name, record, bundle, payloads)
        if payload is None:
            return Verdict(
                **facts,
                verdict=PAYLOAD_MISSING,
                key_status=status,
                code=ErrorCode.EVIDENCE_PAYLOAD_MISSING.value,
                reason="the bundle keeps only the payload's hash; give the payload "
                f"(SHA-256 {record.payload_sha256}) with --payload to check the signature",
            )
        key = _check_signature(record, bundle.keys, payload)
        return _by_status(facts, record, key, trust)
    except TenantKeysError as exc:
        return Verdict(
            **facts, verdict=INVALID, key_status=status, code=exc.code.value, reason=exc.message
        )


def _payload(
    name: str, record: SignatureRecord, bundle: Bundle, payloads: Mapping[str, bytes]
) -> bytes | None:
    data = payloads.get(record.payload_sha256)
    if data is None and not bundle.hashes_only:
        data = bundle.payloads.get(record.payload_sha256)
        if data is None:
            raise VerificationError(
                f"{name} names payload {record.payload_sha256}, which the bundle lacks",
                code=ErrorCode.EVIDENCE_MALFORMED,
            )
    if data is not None and hashlib.sha256(data).hexdigest() != record.payload_sha256:
        raise VerificationError("the payload's SHA-256 is not the one the record names")
    return data


def _check_signature(
    record: SignatureRecord, keys: Mapping[str, KeyEntry], payload: bytes
) -> KeyEntry:
    """Strict parse, the record against the signed header, the key, the signature."""
    parsed = signing.parse_compact(record.jws)
    header = parsed.header
    signed = {"kid": header.get("kid"), "tenant_id": header.get(signing.TENANT_HEADER)}
    signed["alg"] = header.get("alg")
    for field in ("kid", "tenant_id", "alg"):
        if signed[field] != getattr(record, field):
            raise VerificationError(
                f"the record's {field} {getattr(record, field)[:64]!r} is not the one the JWS "
                f"header signs ({str(signed[field])[:64]!r})",
                code=ErrorCode.EVIDENCE_MALFORMED,
            )
    key = keys.get(record.kid)
    if key is None:
        raise VerificationError(
            f"kid {record.kid[:64]!r} is not in the bundle's JWKS snapshot",
            code=ErrorCode.UNKNOWN_KID,
        )
    if key.tenant_id != record.tenant_id:
        raise VerificationError(
            f"kid {record.kid!r} is a key of tenant {key.tenant_id!r}, not {record.tenant_id!r}",
            code=ErrorCode.TENANT_MISMATCH,
        )
    if parsed.payload is not None and parsed.payload != payload:
        raise VerificationError("the JWS carries a different payload than the bundle's")
    signing.verify_parsed(parsed, payload, key.alg, key.public_bytes)
    return key


def _by_status(
    facts: dict[str, str], record: SignatureRecord, key: KeyEntry, trust: Sequence[bytes]
) -> Verdict:
    """The signature matches its key; what the key's status and the timestamp make of it."""
    base = {**facts, "key_status": key.status}
    proven: datetime | None = None
    unchecked = ""
    if record.timestamp is not None:
        try:
            proven = proven_signing_time(record.timestamp, record.jws, trust)
        except TimestampUnchecked as exc:
            unchecked = f"its timestamp was not checked ({exc})"
    stamped = proven.isoformat() if proven is not None else None
    if key.revoked_at is None:
        note = f"; timestamped {stamped}" if stamped else (f"; {unchecked}" if unchecked else "")
        return Verdict(
            **base, verdict=VALID, timestamp_time=stamped, reason=f"key {key.status}{note}"
        )
    revoked = key.revoked_at.isoformat()
    token = record.timestamp
    if proven is not None and token is not None and proves_before(token, key.revoked_at):
        return Verdict(
            **base,
            verdict=VALID,
            timestamp_time=stamped,
            reason=f"key revoked {revoked}, after this signature: timestamped {stamped}",
        )
    if proven is not None:
        why = f"its timestamp ({stamped}) is not before the revocation"
    else:
        why = unchecked or "no timestamp"
    return Verdict(
        **base,
        verdict=REVOKED_NO_PROOF,
        code=ErrorCode.EVIDENCE_REVOKED_NO_PROOF.value,
        timestamp_time=stamped,
        reason=f"key since revoked ({revoked}); no proof of signing time: {why}",
    )
