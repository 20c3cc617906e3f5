"""Building an evidence bundle from ``tenantkeys sign`` records, their payloads and a JWKS
snapshot of the key store (every signing key version of the tenants, revoked ones included).

Each record is checked before it goes in: the strict JWS parse, the record against its signed
header, the key in the snapshot, and the signature itself whenever its payload is given (whatever
the key's status: a key revoked since must still verify what it signed before).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from tenantkeys import __version__, signing
from tenantkeys.errors import ErrorCode, InvalidRequest, TenantKeysError
from tenantkeys.evidence.bundle import SignatureRecord, key_entry, write_bundle
from tenantkeys.evidence.format import MAX_SIGNATURES
from tenantkeys.evidence.signing_time import TimestampUnchecked, proven_signing_time
from tenantkeys.keys.model import KeyVersion, Purpose


def bad_input(message: str) -> InvalidRequest:
    return InvalidRequest(message, code=ErrorCode.EVIDENCE_INPUT)


@dataclass(frozen=True)
class ExportSummary:
    """What went into a bundle (counts only: no payload, no key material)."""

    path: str
    signatures: int
    payloads: int
    keys: int
    tenants: list[str]
    hashes_only: bool
    timestamps: int


def snapshot_entry(version: KeyVersion) -> dict[str, Any]:
    """A key version as the bundle's JWKS lists it: public JWK, status and its times."""
    assert version.public_key is not None

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        **signing.public_jwk(version.algorithm, version.public_key),
        "kid": version.kid,
        "alg": version.algorithm,
        "use": "sig",
        "tenant_id": version.tenant_id,
        "version": version.version,
        "status": version.status.value,
        "created_at": iso(version.created_at),
        "retired_at": iso(version.retired_at),
        "revoked_at": iso(version.revoked_at),
    }


def check_certificates(pems: Sequence[bytes]) -> list[bytes]:
    for pem in pems:
        try:
            found = x509.load_pem_x509_certificates(pem)
        except ValueError:
            found = []
        if not found:
            raise bad_input("a --tsa-ca file holds no PEM certificate")
    return list(pems)


def export_bundle(
    out: Path,
    records: Sequence[tuple[str, SignatureRecord]],
    versions: Sequence[KeyVersion],
    *,
    payloads: Mapping[str, bytes],
    hashes_only: bool,
    tsa_certificates: Sequence[bytes],
    now: datetime,
) -> ExportSummary:
    """Check every ``(where, record)`` and write the bundle to ``out``."""
    if not records:
        raise bad_input("no signature records given")
    chosen: dict[str, tuple[str, SignatureRecord]] = {}
    for where, record in records:  # one entry per JWS; a copy with a timestamp wins
        if record.jws not in chosen or record.timestamp is not None:
            chosen[record.jws] = (where, record)
    unique = list(chosen.values())
    if len(unique) > MAX_SIGNATURES:
        raise bad_input(f"{len(unique)} signatures; a bundle holds {MAX_SIGNATURES}: split them")
    entries = [
        snapshot_entry(v)
        for v in versions
        if v.purpose is Purpose.SIGNING and v.public_key is not None
    ]
    keys = {entry.kid: entry for entry in (key_entry(e, i) for i, e in enumerate(entries))}
    tenants = sorted({v.tenant_id for v in versions})
    certificates = check_certificates(tsa_certificates)
    kept: dict[str, bytes] = {}
    for where, record in unique:
        try:
            payload = _check(record, keys, tenants, payloads)
            if record.timestamp is not None and certificates:
                _check_timestamp(record, certificates)
        except TenantKeysError as exc:
            raise type(exc)(f"{where}: {exc.message}", code=exc.code) from None
        if payload is None and not hashes_only:
            raise bad_input(
                f"{where}: no payload given hashes to {record.payload_sha256}; give it with "
                "--payload FILE, or export with --hashes-only"
            )
        if payload is not None and not hashes_only:
            kept[record.payload_sha256] = payload
    write_bundle(
        out,
        manifest={
            "created_at": now.isoformat(),
            "created_by": f"tenantkeys {__version__}",
            "hashes_only": hashes_only,
            "tenants": tenants,
            "signatures": len(unique),
        },
        jwks={"snapshot_at": now.isoformat(), "keys": entries},
        signatures=[record for _, record in unique],
        payloads=kept,
        tsa_certificates=certificates,
    )
    return ExportSummary(
        path=str(out),
        signatures=len(unique),
        payloads=len(kept),
        keys=len(entries),
        tenants=tenants,
        hashes_only=hashes_only,
        timestamps=sum(1 for _, record in unique if record.timestamp is not None),
    )


def _check(
    record: SignatureRecord,
    keys: Mapping[str, Any],
    tenants: Sequence[str],
    payloads: Mapping[str, bytes],
) -> bytes | None:
    parsed = signing.parse_compact(record.jws)
    header = parsed.header
    for field, signed in (
        ("kid", header.get("kid")),
        ("tenant_id", header.get(signing.TENANT_HEADER)),
        ("alg", header.get("alg")),
    ):
        if signed != getattr(record, field):
            raise bad_input(f"the record's {field} is not the one its JWS header signs")
    if record.tenant_id not in tenants:
        raise bad_input(
            f"tenant {record.tenant_id!r} is not among the exported tenants {tenants}; "
            "add --tenant for it"
        )
    key = keys.get(record.kid)
    if key is None or key.tenant_id != record.tenant_id:
        raise bad_input(
            f"kid {record.kid!r} is no signing key of tenant {record.tenant_id!r} in this key "
            "store (another deployment's signature?)"
        )
    payload = payloads.get(record.payload_sha256)
    if payload is None and parsed.payload is not None:
        payload = (
            parsed.payload
            if hashlib.sha256(parsed.payload).hexdigest() == (record.payload_sha256)
            else None
        )
    if payload is not None:
        signing.verify_parsed(parsed, payload, key.alg, key.public_bytes)
    return payload


def _check_timestamp(record: SignatureRecord, certificates: Sequence[bytes]) -> None:
    """A token that does not verify against the CA stored beside it is refused now, not in
    an audit years later (unchecked when the timestamp module is not installed)."""
    assert record.timestamp is not None
    try:
        proven_signing_time(record.timestamp, record.jws, certificates)
    except TimestampUnchecked:
        return
