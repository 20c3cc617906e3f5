"""What a bundle holds, as typed records: read (checked) from a :class:`BundleReader`, written
to a ZIP file. The layout is docs/evidence.md's; :mod:`.format` guards the reading."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tenantkeys import signing
from tenantkeys.errors import ErrorCode, InvalidRequest
from tenantkeys.evidence.format import (
    FORMAT,
    FORMAT_FAMILY,
    JWKS,
    MANIFEST,
    MAX_MEMBER_BYTES,
    MAX_SIGNATURES,
    BundleReader,
    dump_json,
    load_json,
    malformed,
    text_field,
)

STATUSES = ("active", "retired", "revoked")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: The longest base64 timestamp token a record may carry.
MAX_TIMESTAMP_CHARS = 64 * 1024
#: The record members of ``tenantkeys sign``'s output, all required.
SIGNATURE_FIELDS = ("jws", "kid", "tenant_id", "alg", "payload_sha256", "signed_at")
_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: one set of inputs, one bundle


@dataclass(frozen=True)
class KeyEntry:
    """One key version of the JWKS snapshot, with its status and when it changed."""

    jwk: dict[str, str]
    kid: str
    alg: str
    tenant_id: str
    status: str
    public_bytes: bytes
    revoked_at: datetime | None


@dataclass(frozen=True)
class SignatureRecord:
    """A signature as ``tenantkeys sign`` prints it, plus its optional RFC 3161 timestamp."""

    jws: str
    kid: str
    tenant_id: str
    alg: str
    payload_sha256: str
    signed_at: str
    timestamp: str | None = None

    @classmethod
    def from_json(cls, data: object, what: str) -> SignatureRecord:
        """The record in ``data`` (``what`` names it in errors); TK-EVIDENCE-MALFORMED if not."""
        if not isinstance(data, dict):
            raise malformed(f"{what} is not a JSON object")
        values = {name: text_field(data, name, what, limit=1 << 20) for name in SIGNATURE_FIELDS}
        if not SHA256_HEX.fullmatch(values["payload_sha256"]):
            raise malformed(f"{what}: payload_sha256 must be 64 lowercase hex digits")
        stamp = data.get("timestamp")
        if stamp is not None:
            if not isinstance(stamp, str) or len(stamp) > MAX_TIMESTAMP_CHARS:
                raise malformed(f"{what}: timestamp must be a base64 string (a DER RFC 3161 token)")
            try:
                base64.b64decode(stamp, validate=True)
            except (binascii.Error, ValueError):
                raise malformed(f"{what}: timestamp is not base64") from None
        return cls(**values, timestamp=stamp)

    def to_json(self) -> dict[str, str]:
        data = {name: getattr(self, name) for name in SIGNATURE_FIELDS}
        if self.timestamp is not None:
            data["timestamp"] = self.timestamp
        return data


@dataclass(frozen=True)
class Bundle:
    """A bundle's contents, every digest checked."""

    manifest: dict[str, Any]
    keys: dict[str, KeyEntry]
    signatures: list[tuple[str, SignatureRecord]]
    payloads: dict[str, bytes]
    tsa_certificates: list[bytes]
    hashes_only: bool


def parse_time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise malformed(f"{what} must be an ISO 8601 date-time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise malformed(f"{what} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise malformed(f"{what} has no time zone")
    return parsed


def key_entry(jwk: object, index: int) -> KeyEntry:
    """One JWKS entry, its kid checked against the RFC 7638 thumbprint of its public key."""
    what = f"jwks.json key {index}"
    if not isinstance(jwk, dict):
        raise malformed(f"{what} is not an object")
    kid = text_field(jwk, "kid", what, limit=128)
    alg = text_field(jwk, "alg", what, limit=16)
    status = jwk.get("status")
    if alg not in signing.ALGORITHMS or status not in STATUSES:
        raise malformed(f"{what}: alg must be one of {signing.ALGORITHMS}, status {STATUSES}")
    kty, crv = ("OKP", "Ed25519") if alg in signing.ED25519_ALGORITHMS else ("EC", "P-256")
    if jwk.get("kty") != kty or jwk.get("crv") != crv:
        raise malformed(f"{what}: an {alg} key has kty {kty!r} and crv {crv!r}")
    names = ("crv", "kty", "x") if kty == "OKP" else ("crv", "kty", "x", "y")
    try:
        public = {name: text_field(jwk, name, what, limit=128) for name in names}
        if signing.thumbprint(public) != kid:
            raise malformed(f"{what}: kid {kid!r} is not the thumbprint of its key")
        if public["kty"] == "OKP":
            raw = signing.b64url_decode(public["x"], what=f"{what} x")
        else:
            x = signing.b64url_decode(public["x"], what=f"{what} x")
            raw = b"\x04" + x + signing.b64url_decode(public["y"], what=f"{what} y")
    except InvalidRequest as exc:
        raise malformed(exc.message) from None
    revoked_at = jwk.get("revoked_at")
    when = parse_time(revoked_at, f"{what} revoked_at") if status == "revoked" else None
    tenant = text_field(jwk, "tenant_id", what, limit=64)
    return KeyEntry(jwk, kid, alg, tenant, str(status), raw, when)


def read_bundle(reader: BundleReader) -> Bundle:
    """The manifest first (format, digests of every member), then the JWKS and the records."""
    manifest = load_json(reader.read(MANIFEST), MANIFEST)
    if not isinstance(manifest, dict):
        raise malformed("manifest.json is not an object")
    found = manifest.get("format")
    if found != FORMAT:
        known = isinstance(found, str) and found.startswith(FORMAT_FAMILY)
        raise InvalidRequest(
            f"the bundle's format is {str(found)[:60]!r}; this tenantkeys reads {FORMAT!r}"
            + (" (a newer tenantkeys wrote it)" if known else ""),
            code=ErrorCode.EVIDENCE_FORMAT_UNSUPPORTED if known else ErrorCode.EVIDENCE_MALFORMED,
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise malformed("manifest.json has no 'files' object")
    present = set(reader.members) - {MANIFEST}
    if present != set(files):
        extra = sorted(present ^ set(files))[:3]
        raise malformed(f"manifest.json and the bundle's members differ: {extra}")
    contents: dict[str, bytes] = {}
    for name in sorted(files):
        data = reader.read(name)
        if hashlib.sha256(data).hexdigest() != files[name]:
            raise malformed(f"member {name!r} does not match its SHA-256 in manifest.json")
        contents[name] = data
    return _parse(manifest, contents)


def _parse(manifest: dict[str, Any], contents: dict[str, bytes]) -> Bundle:
    jwks = load_json(contents.get(JWKS, b"null"), JWKS)
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise malformed("jwks.json must be an object with a 'keys' array")
    keys: dict[str, KeyEntry] = {}
    for index, jwk in enumerate(jwks["keys"]):
        entry = key_entry(jwk, index)
        keys[entry.kid] = entry
    names = sorted(
        (n for n in contents if n.startswith("signatures/")),
        key=lambda n: int(n.split("/")[1].split(".")[0]),
    )
    if names != [f"signatures/{i}.json" for i in range(1, len(names) + 1)]:
        raise malformed("signatures must be numbered signatures/1.json, 2, 3 ... without gaps")
    if len(names) > MAX_SIGNATURES:
        raise malformed(f"the bundle has {len(names)} signatures; the limit is {MAX_SIGNATURES}")
    signatures = [
        (name, SignatureRecord.from_json(load_json(contents[name], name), name)) for name in names
    ]
    payloads = {n.split("/")[1]: d for n, d in contents.items() if n.startswith("payloads/")}
    for digest, data in payloads.items():
        if hashlib.sha256(data).hexdigest() != digest:
            raise malformed(f"member payloads/{digest} is not named by its SHA-256")
    hashes_only = manifest.get("hashes_only") is True
    if hashes_only and payloads:
        raise malformed("a hashes-only bundle holds payloads")
    tsa = [contents[n] for n in sorted(contents) if n.startswith("tsa/")]
    return Bundle(manifest, keys, signatures, payloads, tsa, hashes_only)


def payload_index(payloads: Iterable[bytes]) -> dict[str, bytes]:
    """Given payloads by the SHA-256 a record names: as given, and their RFC 8785 form."""
    index: dict[str, bytes] = {}
    for data in payloads:
        if len(data) > MAX_MEMBER_BYTES["payload"]:
            raise InvalidRequest(
                f"a payload is {len(data)} bytes; a bundle holds at most 64 MiB each",
                code=ErrorCode.EVIDENCE_INPUT,
            )
        index[hashlib.sha256(data).hexdigest()] = data
        try:
            canonical = signing.canonicalize(data)
        except InvalidRequest:
            continue  # not JSON: only a plain signature can cover it
        index.setdefault(hashlib.sha256(canonical).hexdigest(), canonical)
    return index


def write_bundle(
    out: Path,
    *,
    manifest: Mapping[str, Any],
    jwks: Mapping[str, Any],
    signatures: Sequence[SignatureRecord],
    payloads: Mapping[str, bytes],
    tsa_certificates: Sequence[bytes],
) -> None:
    """Write the bundle next to ``out`` and rename it into place: a reader never sees half."""
    members: dict[str, bytes] = {JWKS: dump_json(jwks)}
    for number, record in enumerate(signatures, start=1):
        members[f"signatures/{number}.json"] = dump_json(record.to_json())
    for digest, data in payloads.items():
        members[f"payloads/{digest}"] = data
    for number, pem in enumerate(tsa_certificates, start=1):
        members[f"tsa/ca-{number}.pem"] = pem
    files = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(members.items())}
    members[MANIFEST] = dump_json({**manifest, "format": FORMAT, "files": files})
    handle, temporary = tempfile.mkstemp(prefix=".evidence-", dir=out.parent)
    try:
        with os.fdopen(handle, "wb") as raw, zipfile.ZipFile(raw, "w") as archive:
            for name in [MANIFEST, *sorted(set(members) - {MANIFEST})]:
                info = zipfile.ZipInfo(name, date_time=_DATE_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o100644 << 16
                archive.writestr(info, members[name])
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
