"""The evidence bundle format (``tenantkeys-evidence/1``, docs/evidence.md) and its safe reader.

A bundle is a ZIP file of JSON members and payload bytes. Every member name matches one of
:data:`MEMBER_NAMES`; ``manifest.json`` lists every other member with its SHA-256. A bundle is
hostile input: :class:`BundleReader` refuses it, with a code, before it reads more than the caps
below allow (the file, the central directory, each member, their sum, the compression ratio).
Nothing is ever extracted to disk.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tenantkeys.errors import ErrorCode, InvalidRequest
from tenantkeys.signing import canonical

#: The ``format`` member of the manifest; a reader refuses any other.
FORMAT = "tenantkeys-evidence/1"
FORMAT_FAMILY = "tenantkeys-evidence/"
MANIFEST = "manifest.json"
JWKS = "jwks.json"

#: Member name rules (anything else is refused): no directories, no "..", no backslashes.
MEMBER_NAMES = {
    "manifest": re.compile(r"manifest\.json"),
    "jwks": re.compile(r"jwks\.json"),
    "signature": re.compile(r"signatures/[1-9][0-9]{0,5}\.json"),
    "payload": re.compile(r"payloads/[0-9a-f]{64}"),
    "tsa": re.compile(r"tsa/[A-Za-z0-9_-]{1,64}\.pem"),
}
MIB = 1024 * 1024
#: The largest bundle file read at all.
MAX_BUNDLE_BYTES = 2048 * MIB
#: Members per bundle: below ZIP's 65,535, so a bundle never needs ZIP64.
MAX_MEMBERS = 60_000
#: Signatures per bundle (each may have a payload member); split a larger set.
MAX_SIGNATURES = 25_000
#: The central directory's size, read before any member.
MAX_DIRECTORY_BYTES = 16 * MIB
#: The most each kind of member may hold once decompressed.
MAX_MEMBER_BYTES = {
    "manifest": 16 * MIB,
    "jwks": 16 * MIB,
    "signature": 1 * MIB,
    "payload": 64 * MIB,
    "tsa": 1 * MIB,
}
#: The most all members may hold together once decompressed.
MAX_TOTAL_BYTES = 4096 * MIB
#: Decompressed / compressed size above which a member over 1 MiB is taken for a zip bomb.
MAX_RATIO = 200
_ALLOWED_COMPRESSION = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
#: What zipfile raises on a damaged archive (a fuzzed bundle reaches each of them).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    RuntimeError,
    struct.error,
)
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIGNATURE = b"PK\x05\x06"
_SYMLINK = 0o120000
_FILE_TYPE = 0o170000


def malformed(message: str) -> InvalidRequest:
    return InvalidRequest(message, code=ErrorCode.EVIDENCE_MALFORMED)


def too_large(message: str) -> InvalidRequest:
    return InvalidRequest(message, code=ErrorCode.EVIDENCE_TOO_LARGE)


def unsafe(message: str) -> InvalidRequest:
    return InvalidRequest(message, code=ErrorCode.EVIDENCE_UNSAFE_MEMBER)


def member_kind(name: str) -> str | None:
    """Which kind of member ``name`` is (``signature``, ``payload`` ...), or None."""
    for kind, pattern in MEMBER_NAMES.items():
        if pattern.fullmatch(name):
            return kind
    return None


def load_json(data: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no repeated member, no NaN, nesting within the signing depth limit."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise malformed(f"{what} is not UTF-8 (invalid byte at offset {exc.start})") from None
    if canonical.nesting_depth(text) > canonical.MAX_JSON_DEPTH:
        raise malformed(f"{what} nests deeper than {canonical.MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        # json's message names a position, never the document's text.
        reason = str(exc).splitlines()[0][:160] if isinstance(exc, ValueError) else "too deep"
        raise malformed(f"{what} is not valid JSON: {reason}") from None


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            raise ValueError(f"member {name[:40]!r} appears twice")
        found[name] = value
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def dump_json(value: Any) -> bytes:
    """How the bundle writes JSON: sorted members, two-space indent, UTF-8, a final newline."""
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def text_field(record: Mapping[str, Any], name: str, what: str, *, limit: int = 4096) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise malformed(f"{what}: {name!r} must be a non-empty string of at most {limit} chars")
    return value


@dataclass(frozen=True)
class Member:
    """One member the reader accepted: its name, kind and declared size."""

    name: str
    kind: str
    size: int


class BundleReader:
    """Reads a bundle within the caps; every refusal is a TK-EVIDENCE-* code."""

    def __init__(self, archive: zipfile.ZipFile, members: dict[str, Member]) -> None:
        self._archive = archive
        self.members = members

    @classmethod
    @contextmanager
    def open(cls, path: Path) -> Iterator[BundleReader]:
        """Check the file and its central directory, then every member's name and sizes."""
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise InvalidRequest(
                f"cannot read the bundle {path}: {exc.strerror}", code=ErrorCode.EVIDENCE_INPUT
            ) from None
        if size > MAX_BUNDLE_BYTES:
            raise too_large(f"the bundle is {size} bytes; the limit is {MAX_BUNDLE_BYTES}")
        with path.open("rb") as handle:
            _check_directory(handle, size)
            try:
                archive = zipfile.ZipFile(handle)
            except NotImplementedError as exc:  # a ZIP version or feature we never write
                raise unsafe(
                    f"the bundle uses a ZIP feature tenantkeys never writes ({exc})"
                ) from None
            except _ZIP_ERRORS as exc:
                raise malformed(f"the bundle is not a readable ZIP file ({exc})") from None
            with archive:
                yield cls(archive, _check_members(archive.infolist()))

    def read(self, name: str) -> bytes:
        """A member's bytes, at most its cap (a declared size that lies is caught here too)."""
        member = self.members.get(name)
        if member is None:
            raise malformed(f"the bundle has no member {name!r}")
        cap = MAX_MEMBER_BYTES[member.kind]
        try:
            with self._archive.open(name) as stream:
                data = _read_capped(stream, min(cap, member.size))
        except NotImplementedError:
            raise unsafe(f"member {name!r} uses an unsupported compression") from None
        except _ZIP_ERRORS as exc:
            raise malformed(f"member {name!r} does not decompress ({exc})") from None
        return data


def _read_capped(stream: IO[bytes], limit: int) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise too_large(f"a member decompresses to more than its declared {limit} bytes")
    return data


def _check_directory(handle: IO[bytes], size: int) -> None:
    """Read the end record ourselves: refuse a huge directory before zipfile parses it."""
    tail = min(size, _EOCD.size + 65_535)
    handle.seek(size - tail)
    data = handle.read(tail)
    at = data.rfind(_EOCD_SIGNATURE)
    if at < 0 or len(data) - at < _EOCD.size:
        raise malformed("the bundle is not a ZIP file (no end of central directory record)")
    _, disk, disk_dir, entries_here, entries, dir_size, dir_offset, _ = _EOCD.unpack_from(data, at)
    if disk or disk_dir or entries_here != entries:
        raise unsafe("the bundle spans several disks; tenantkeys writes single-file bundles")
    if entries == 0xFFFF or 0xFFFFFFFF in (dir_size, dir_offset):
        raise unsafe("the bundle uses ZIP64, which a bundle within the limits never needs")
    if entries > MAX_MEMBERS:
        raise too_large(f"the bundle has {entries} members; the limit is {MAX_MEMBERS}")
    if dir_size > MAX_DIRECTORY_BYTES:
        raise too_large(f"the bundle's directory is {dir_size} bytes; the limit is 16 MiB")
    handle.seek(0)


def _check_members(infos: list[zipfile.ZipInfo]) -> dict[str, Member]:
    if len(infos) > MAX_MEMBERS:
        raise too_large(f"the bundle has {len(infos)} members; the limit is {MAX_MEMBERS}")
    members: dict[str, Member] = {}
    total = 0
    for info in infos:
        name = info.filename
        shown = repr(name[:80])
        kind = member_kind(name)
        if kind is None:
            raise unsafe(
                f"member {shown} is not a name a bundle holds (manifest.json, jwks.json, "
                "signatures/N.json, payloads/SHA256, tsa/NAME.pem)"
            )
        if name in members:
            raise unsafe(f"member {shown} appears twice")
        if info.flag_bits & 0x1:
            raise unsafe(f"member {shown} is encrypted")
        if info.compress_type not in _ALLOWED_COMPRESSION:
            raise unsafe(f"member {shown} uses compression method {info.compress_type}")
        if (info.external_attr >> 16) & _FILE_TYPE == _SYMLINK:
            raise unsafe(f"member {shown} is a symbolic link")
        cap = MAX_MEMBER_BYTES[kind]
        if info.file_size > cap:
            raise too_large(f"member {shown} is {info.file_size} bytes; a {kind} holds {cap}")
        if info.file_size > MIB and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise too_large(
                f"member {shown} expands {info.file_size // max(info.compress_size, 1)}-fold; "
                f"more than {MAX_RATIO}-fold is taken for a zip bomb"
            )
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise too_large(f"the members hold more than {MAX_TOTAL_BYTES} bytes together")
        members[name] = Member(name, kind, info.file_size)
    return members
