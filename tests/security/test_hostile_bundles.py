"""Hostile evidence bundles (docs/evidence.md#limits-a-bundle-is-hostile-input).

Each bundle below is built byte for byte: path traversal names, duplicates, symbolic links,
encryption, foreign compression, zip bombs, lying sizes, a forged end record, a 2 GiB sparse
file, and every way the manifest, JWKS and records can be wrong. Each must be refused with its
TK-EVIDENCE-* code, and the large ones before their bytes are decompressed (tracemalloc's peak
proves the refusal did not read them). Forged records and snapshots that are well formed get
a verdict that is not a pass. A hypothesis run mutates a real bundle at random: every outcome
is a verdict or a coded refusal, never another exception.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tempfile
import tracemalloc
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantkeys import signing
from tenantkeys.errors import ErrorCode, TenantKeysError
from tenantkeys.evidence import verify_file
from tenantkeys.evidence.bundle import SignatureRecord, write_bundle
from tests.security.hostile import count_case

pytestmark = pytest.mark.unit

MIB = 1024 * 1024
TENANT = "acme"
PAYLOAD = b"invoice 7 paid"
FAST = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}
MUTATION_EXAMPLES = 400


def valid_members() -> dict[str, bytes]:
    """The members of a real one-signature bundle (a fresh Ed25519 key), manifest included."""
    key, _ = signing.generate("Ed25519")
    header = {"alg": "Ed25519", "kid": key.kid, signing.TENANT_HEADER: TENANT}
    record = SignatureRecord(
        jws=signing.sign_compact(key, header, PAYLOAD),
        kid=key.kid,
        tenant_id=TENANT,
        alg="Ed25519",
        payload_sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        signed_at="2026-01-01T00:00:00.000+00:00",
    )
    jwk = {
        **signing.public_jwk("Ed25519", key.public_bytes),
        "kid": key.kid,
        "alg": "Ed25519",
        "use": "sig",
        "tenant_id": TENANT,
        "version": 1,
        "status": "active",
        "created_at": "2026-01-01T00:00:00+00:00",
        "retired_at": None,
        "revoked_at": None,
    }
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bundle.zip"
        write_bundle(
            path,
            manifest={"hashes_only": False, "tenants": [TENANT], "signatures": 1},
            jwks={"keys": [jwk]},
            signatures=[record],
            payloads={record.payload_sha256: PAYLOAD},
            tsa_certificates=[],
        )
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name) for name in archive.namelist()}


MEMBERS = valid_members()


def zip_bytes(
    members: dict[str, bytes] | list[tuple[zipfile.ZipInfo | str, bytes]], *, fix: bool = False
) -> bytes:
    """A ZIP of ``members``; with ``fix`` the manifest lists every other member's digest."""
    items = list(members.items()) if isinstance(members, dict) else members
    if fix:
        names = {n.filename if isinstance(n, zipfile.ZipInfo) else n: d for n, d in items}
        manifest = json.loads(names["manifest.json"])
        manifest["files"] = {
            n: hashlib.sha256(d).hexdigest() for n, d in names.items() if n != "manifest.json"
        }
        items = [
            (n, json.dumps(manifest).encode() if n == "manifest.json" else d) for n, d in items
        ]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": on purpose
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in items:
                archive.writestr(name, data)
    return buffer.getvalue()


def refusal(tmp_path: Path, data: bytes) -> ErrorCode:
    path = tmp_path / "bundle.zip"
    path.write_bytes(data)
    with pytest.raises(TenantKeysError) as caught:
        verify_file(path)
    line = caught.value.one_line()
    assert "Traceback" not in line and "\n" not in line
    return caught.value.code


def test_the_untouched_bundle_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "good.zip"
    path.write_bytes(zip_bytes(MEMBERS))
    assert [v.verdict for v in verify_file(path)] == ["valid"]


def info(name: str, **attributes: Any) -> zipfile.ZipInfo:
    made = zipfile.ZipInfo(name)
    made.compress_type = attributes.pop("compress_type", zipfile.ZIP_DEFLATED)
    for attribute, value in attributes.items():
        setattr(made, attribute, value)
    return made


UNSAFE_NAMES = [
    "../../etc/cron.d/evil",
    "/etc/passwd",
    "payloads\\..\\..\\evil",
    "signatures/",
    "signatures/../jwks.json",
    "signatures/1.json\x00.txt",
    "README.txt",
    "signatures/01.json",
    "payloads/" + "A" * 64,
    "tsa/../../ca.pem",
]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_names_outside_the_format_are_refused(tmp_path: Path, name: str) -> None:
    data = zip_bytes([*MEMBERS.items(), (name, b"x")])
    assert refusal(tmp_path, data) is ErrorCode.EVIDENCE_UNSAFE_MEMBER


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(("jwks.json", b"{}"), id="duplicate"),
        pytest.param((info("tsa/ca.pem", external_attr=0o120777 << 16), b"/etc"), id="symlink"),
        pytest.param((info("tsa/ca.pem", compress_type=zipfile.ZIP_BZIP2), b"x"), id="bzip2"),
        pytest.param((info("tsa/ca.pem", compress_type=zipfile.ZIP_LZMA), b"x"), id="lzma"),
    ],
)
def test_duplicates_links_encryption_and_foreign_compression_are_refused(
    tmp_path: Path, extra: tuple[Any, bytes]
) -> None:
    assert refusal(tmp_path, zip_bytes([*MEMBERS.items(), extra])) is (
        ErrorCode.EVIDENCE_UNSAFE_MEMBER
    )


def test_an_encrypted_member_is_refused(tmp_path: Path) -> None:
    encrypted = patch_header(zip_bytes(MEMBERS), b"jwks.json", "flags", 0x1)
    assert refusal(tmp_path, encrypted) is ErrorCode.EVIDENCE_UNSAFE_MEMBER


def peak_during(tmp_path: Path, data: bytes) -> tuple[ErrorCode, int]:
    path = tmp_path / "bundle.zip"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        code = _refuse(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return code, peak


def _refuse(path: Path) -> ErrorCode:
    with pytest.raises(TenantKeysError) as caught:
        verify_file(path)
    return caught.value.code


def test_a_zip_bomb_is_refused_before_it_is_decompressed(tmp_path: Path) -> None:
    zeros = bytes(48 * MIB)  # within the 64 MiB payload cap: only the ratio gives it away
    digest = hashlib.sha256(zeros).hexdigest()
    data = zip_bytes([*MEMBERS.items(), (f"payloads/{digest}", zeros)], fix=True)
    del zeros
    assert len(data) < MIB  # it compresses over 1000-fold
    code, peak = peak_during(tmp_path, data)
    assert code is ErrorCode.EVIDENCE_TOO_LARGE
    assert peak < 8 * MIB, f"the refusal allocated {peak} bytes: it decompressed the bomb"


def test_members_over_their_cap_are_refused_by_declared_size(tmp_path: Path) -> None:
    big_record = bytes(range(256)) * (MIB // 256 + 1)  # 1 MiB + 256: a record holds 1 MiB
    data = zip_bytes({**MEMBERS, "signatures/2.json": big_record}, fix=True)
    code, peak = peak_during(tmp_path, data)
    assert code is ErrorCode.EVIDENCE_TOO_LARGE and peak < 4 * MIB


#: Header fields by name: (struct format, offset in the local header, in the central one).
FIELDS = {"size": ("<L", 22, 24), "flags": ("<H", 6, 8)}


def patch_header(data: bytes, name: bytes, field: str, value: int) -> bytes:
    """Set ``field`` of ``name``'s local and central headers to ``value``."""
    patched = bytearray(data)
    fmt, local_at, central_at = FIELDS[field]
    # (signature, offset of the field, of the name's length, of the name)
    for signature, field_at, length_at, name_at in (
        (b"PK\x03\x04", local_at, 26, 30),
        (b"PK\x01\x02", central_at, 28, 46),
    ):
        at = patched.find(signature)
        while at >= 0:
            (length,) = struct.unpack_from("<H", patched, at + length_at)
            if patched[at + name_at : at + name_at + length] == name:
                struct.pack_into(fmt, patched, at + field_at, value)
            at = patched.find(signature, at + 1)
    return bytes(patched)


def test_a_member_that_lies_about_its_size_is_refused(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 64
    digest = hashlib.sha256(payload).hexdigest()
    data = zip_bytes({**MEMBERS, f"payloads/{digest}": payload}, fix=True)
    lying = patch_header(data, f"payloads/{digest}".encode(), "size", 16)
    assert lying != data
    assert refusal(tmp_path, lying) is ErrorCode.EVIDENCE_MALFORMED  # stops at 16 bytes


def forged_end_record(entries: int, directory: int, disk: int = 0) -> bytes:
    data = bytearray(zip_bytes(MEMBERS))
    at = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HHHHL", data, at + 4, disk, 0, entries, entries, directory)
    return bytes(data)


@pytest.mark.parametrize(
    ("entries", "directory", "disk", "code"),
    [
        (60_001, 4096, 0, ErrorCode.EVIDENCE_TOO_LARGE),
        (5, 17 * MIB, 0, ErrorCode.EVIDENCE_TOO_LARGE),
        (0xFFFF, 4096, 0, ErrorCode.EVIDENCE_UNSAFE_MEMBER),
        (5, 0xFFFFFFFF, 0, ErrorCode.EVIDENCE_UNSAFE_MEMBER),
        (5, 4096, 1, ErrorCode.EVIDENCE_UNSAFE_MEMBER),
    ],
)
def test_the_end_record_is_judged_before_the_directory_is_parsed(
    tmp_path: Path, entries: int, directory: int, disk: int, code: ErrorCode
) -> None:
    assert refusal(tmp_path, forged_end_record(entries, directory, disk)) is code


def test_a_file_over_two_gib_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.zip"
    with path.open("wb") as handle:
        handle.truncate(2048 * MIB + 1)  # sparse: no disk used, nothing to read
    assert _refuse(path) is ErrorCode.EVIDENCE_TOO_LARGE


def changed(**members: bytes | None) -> dict[str, bytes]:
    result = dict(MEMBERS)
    for key, data in members.items():
        name = key.replace("__", "/").replace("_json", ".json")
        if data is None:
            result.pop(name)
        else:
            result[name] = data
    return result


def manifest_with(**fields: Any) -> bytes:
    return json.dumps({**json.loads(MEMBERS["manifest.json"]), **fields}).encode()


def jwks_with(**fields: Any) -> bytes:
    jwks = json.loads(MEMBERS["jwks.json"])
    jwks["keys"][0].update(fields)
    return json.dumps(jwks).encode()


MALFORMED = {
    "not a zip": b"PK\x03\x04 this is not a zip file at all",
    "empty": b"",
    "truncated": zip_bytes(MEMBERS)[:-30],
    "no manifest": zip_bytes(changed(manifest_json=None)),
    "digest mismatch": zip_bytes(changed(jwks_json=MEMBERS["jwks.json"] + b" ")),
    "unlisted member": zip_bytes({**MEMBERS, "tsa/x.pem": b"x"}),
    "listed member missing": zip_bytes(changed(jwks_json=None)),
    "format unknown": zip_bytes(changed(manifest_json=manifest_with(format="zip"))),
    "manifest not json": zip_bytes(changed(manifest_json=b"{,}")),
    "manifest NaN": zip_bytes(changed(manifest_json=b'{"format": NaN}')),
    "manifest repeated member": zip_bytes(changed(manifest_json=b'{"format": 1, "format": 2}')),
    "manifest too deep": zip_bytes(changed(manifest_json=b"[" * 200 + b"]" * 200)),
    "manifest not utf-8": zip_bytes(changed(manifest_json=b'{"format": "\xff"}')),
    "kid not the thumbprint": zip_bytes(changed(jwks_json=jwks_with(kid="A" * 43)), fix=True),
    "key of another type": zip_bytes(changed(jwks_json=jwks_with(kty="EC")), fix=True),
    "unknown status": zip_bytes(changed(jwks_json=jwks_with(status="fine")), fix=True),
    "revoked without a time": zip_bytes(changed(jwks_json=jwks_with(status="revoked")), fix=True),
    "numbering gap": zip_bytes(
        {**changed(signatures__1_json=None), "signatures/2.json": MEMBERS["signatures/1.json"]},
        fix=True,
    ),
    "record not an object": zip_bytes(changed(signatures__1_json=b"[]"), fix=True),
    "record without jws": zip_bytes(changed(signatures__1_json=b'{"kid": "x"}'), fix=True),
    "payload under another name": zip_bytes({**MEMBERS, "payloads/" + "0" * 64: b"x"}, fix=True),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_bundles_are_refused_with_a_code(tmp_path: Path, case: str) -> None:
    assert refusal(tmp_path, MALFORMED[case]) is ErrorCode.EVIDENCE_MALFORMED


def test_a_newer_format_says_so(tmp_path: Path) -> None:
    data = zip_bytes(changed(manifest_json=manifest_with(format="tenantkeys-evidence/2")))
    assert refusal(tmp_path, data) is ErrorCode.EVIDENCE_FORMAT_UNSUPPORTED


@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=8,
    )
)
@settings(max_examples=MUTATION_EXAMPLES, **FAST)
def test_random_damage_gives_a_verdict_or_a_coded_refusal(
    tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[int, int]]
) -> None:
    count_case("evidence-bundle")
    data = bytearray(ZIPPED)
    for offset, value in edits:
        data[offset % len(data)] = value
    path = tmp_path_factory.mktemp("mutated") / "bundle.zip"
    path.write_bytes(bytes(data))
    try:
        verdicts = verify_file(path)
    except TenantKeysError as exc:
        assert exc.code.value.startswith(("TK-EVIDENCE-", "TK-INVALID-")), exc.one_line()
        return
    # It still opened: a single signature, judged (altered bytes never pass as the original).
    assert len(verdicts) == 1
    if bytes(data) != ZIPPED:
        assert verdicts[0].verdict in {"valid", "invalid", "payload-missing"}


ZIPPED = zip_bytes(MEMBERS)


def record_with(**fields: Any) -> bytes:
    return json.dumps({**json.loads(MEMBERS["signatures/1.json"]), **fields}).encode()


def forged_signature() -> str:
    jws = json.loads(MEMBERS["signatures/1.json"])["jws"]
    protected, _, signature = jws.split(".")
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    return f"{protected}..{flipped}"


FORGED = {
    "record names another kid": (record_with(kid="A" * 43), "TK-EVIDENCE-MALFORMED"),
    "record names another tenant": (record_with(tenant_id="other"), "TK-EVIDENCE-MALFORMED"),
    "signature altered": (record_with(jws=forged_signature()), "TK-SIGNATURE-INVALID"),
    "jws respelled": (record_with(jws=forged_signature() + "="), "TK-JWS-NONCANONICAL-ENCODING"),
}


@pytest.mark.parametrize("case", FORGED)
def test_forged_records_never_pass(tmp_path: Path, case: str) -> None:
    record, code = FORGED[case]
    path = tmp_path / "forged.zip"
    path.write_bytes(zip_bytes(changed(signatures__1_json=record), fix=True))
    [verdict] = verify_file(path)
    assert (verdict.verdict, verdict.code) == ("invalid", code), verdict


@pytest.mark.parametrize(
    ("jwks", "verdict", "code"),
    [
        (jwks_with(tenant_id="other"), "invalid", "TK-TENANT-MISMATCH"),
        (json.dumps({"keys": []}).encode(), "invalid", "TK-UNKNOWN-KID"),
        (
            jwks_with(status="revoked", revoked_at="2026-06-01T00:00:00+00:00"),
            "revoked-no-proof",
            "TK-EVIDENCE-REVOKED-NO-PROOF",
        ),
        (jwks_with(status="retired", retired_at="2026-06-01T00:00:00+00:00"), "valid", None),
    ],
)
def test_the_snapshot_decides_the_key_and_its_status(
    tmp_path: Path, jwks: bytes, verdict: str, code: str | None
) -> None:
    path = tmp_path / "bundle.zip"
    path.write_bytes(zip_bytes(changed(jwks_json=jwks), fix=True))
    [found] = verify_file(path)
    assert (found.verdict, found.code) == (verdict, code), found


def test_a_hashes_only_bundle_is_not_a_pass_without_its_payloads(tmp_path: Path) -> None:
    members = {n: d for n, d in MEMBERS.items() if not n.startswith("payloads/")}
    members["manifest.json"] = manifest_with(hashes_only=True)
    path = tmp_path / "hashes.zip"
    path.write_bytes(zip_bytes(members, fix=True))
    [found] = verify_file(path)
    assert (found.verdict, found.code) == ("payload-missing", "TK-EVIDENCE-PAYLOAD-MISSING")
    [found] = verify_file(path, payloads={hashlib.sha256(PAYLOAD).hexdigest(): PAYLOAD})
    assert found.verdict == "valid"
