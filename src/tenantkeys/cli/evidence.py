"""``tenantkeys evidence export`` and ``evidence verify`` (docs/evidence.md)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import click

from tenantkeys.cli.context import emit
from tenantkeys.errors import ConfigurationError, ErrorCode, InvalidRequest, TenantKeysError
from tenantkeys.evidence.bundle import SignatureRecord
from tenantkeys.evidence.format import MAX_MEMBER_BYTES, load_json

#: Exit status of ``evidence verify`` when some signature is not a plain pass.
EXIT_NOT_VALID = 1
#: The longest signature file read (records are a few hundred bytes each).
MAX_RECORDS_BYTES = 256 * 1024 * 1024


def read_file(path: Path, what: str, limit: int) -> bytes:
    """A file given on the command line, within ``limit`` bytes; TK-EVIDENCE-INPUT if not."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise InvalidRequest(
            f"cannot read {what} {path}: {exc.strerror}", code=ErrorCode.EVIDENCE_INPUT
        ) from None
    if len(data) > limit:
        raise InvalidRequest(
            f"{what} {path} is larger than {limit} bytes", code=ErrorCode.EVIDENCE_INPUT
        )
    return data


def read_records(sources: tuple[str, ...]) -> list[tuple[str, SignatureRecord]]:
    """Records as ``tenantkeys sign`` prints them: one JSON object per line, or one per file."""
    records: list[tuple[str, SignatureRecord]] = []
    for source in sources:
        if source == "-":
            data = sys.stdin.buffer.read(MAX_RECORDS_BYTES + 1)
            if len(data) > MAX_RECORDS_BYTES:
                raise InvalidRequest("standard input is too large", code=ErrorCode.EVIDENCE_INPUT)
        else:
            data = read_file(Path(source), "signature file", MAX_RECORDS_BYTES)
        name = "stdin" if source == "-" else source
        try:
            whole = load_json(data, name)
        except TenantKeysError:
            whole = None  # not one document: one object per line
        if isinstance(whole, dict):
            records.append((name, _record(whole, name)))
            continue
        for number, line in enumerate(data.splitlines(), start=1):
            if line.strip():
                where = f"{name} line {number}"
                records.append((where, _record(load_json(line, where), where)))
    return records


def _record(data: object, where: str) -> SignatureRecord:
    try:
        return SignatureRecord.from_json(data, where)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message, code=ErrorCode.EVIDENCE_INPUT) from None


def read_payloads(files: tuple[Path, ...]) -> list[bytes]:
    return [read_file(f, "payload", MAX_MEMBER_BYTES["payload"]) for f in files]


def read_certificates(files: tuple[Path, ...]) -> list[bytes]:
    return [read_file(f, "TSA certificate", MAX_MEMBER_BYTES["tsa"]) for f in files]


@click.group("evidence")
def evidence_group() -> None:
    """Offline evidence bundles: export signatures with their keys; verify with no service."""


@evidence_group.command("export")
@click.argument("signatures", nargs=-1, required=True)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    help="A tenant whose key versions go in the JWKS snapshot (default: the records' tenants).",
)
@click.option(
    "--payload",
    "payload_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A payload a signature covers (matched by SHA-256); repeat for each.",
)
@click.option("--hashes-only", is_flag=True, help="Keep the payloads' hashes, not the payloads.")
@click.option(
    "--tsa-ca",
    "tsa_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A PEM CA certificate of the timestamp authority, stored in the bundle.",
)
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
def export_command(
    signatures: tuple[str, ...],
    out: Path,
    tenants: tuple[str, ...],
    payload_files: tuple[Path, ...],
    hashes_only: bool,
    tsa_files: tuple[Path, ...],
    force: bool,
) -> None:
    """Write SIGNATURES (files of `tenantkeys sign` output, or - ) into one bundle at --out."""
    from tenantkeys.cli.context import settings, where_from
    from tenantkeys.config.locations import sqlite_path
    from tenantkeys.evidence.bundle import payload_index
    from tenantkeys.evidence.export import export_bundle
    from tenantkeys.keys.model import validate_tenant_id
    from tenantkeys.keys.store import KeyStore

    if out.exists() and not force:
        raise InvalidRequest(
            f"{out} exists; choose another --out or pass --force to replace it",
            code=ErrorCode.EVIDENCE_INPUT,
        )
    records = read_records(signatures)
    wanted = sorted(set(tenants) or {record.tenant_id for _, record in records})
    config = settings()
    missing = sqlite_path(config.database_url)
    if missing is not None and not missing.exists():  # a read path: never create a store
        raise ConfigurationError(
            f"no key store at {missing.resolve()} ({where_from(config)}); run from the "
            "deployment's directory or set TENANTKEYS_DATABASE_URL to its store",
            code=ErrorCode.STORE_NOT_FOUND,
        )
    store = KeyStore.from_url(config.database_url)
    try:
        versions = []
        for tenant in wanted:
            found = store.versions(validate_tenant_id(tenant))
            if not found:
                raise InvalidRequest(
                    f"tenant {tenant!r} has no keys in this key store",
                    code=ErrorCode.KEY_NOT_FOUND,
                )
            versions.extend(found)
    finally:
        store.close()
    summary = export_bundle(
        out,
        records,
        versions,
        payloads=payload_index(read_payloads(payload_files)),
        hashes_only=hashes_only,
        tsa_certificates=read_certificates(tsa_files),
        now=datetime.now(UTC),
    )
    emit(asdict(summary))


@evidence_group.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--payload",
    "payload_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A payload a hashes-only bundle left out (matched by SHA-256); repeat for each.",
)
@click.option(
    "--tsa-ca",
    "tsa_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Check timestamps against this TSA CA certificate instead of the bundle's own.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
def verify_command(
    bundle: Path, payload_files: tuple[Path, ...], tsa_files: tuple[Path, ...], as_json: bool
) -> None:
    """Judge every signature in BUNDLE offline; exit 1 unless every verdict is `valid`.

    Reads nothing but the bundle (and the files given): no settings, key store, Redis or
    network. A malformed or hostile bundle is refused with a TK-EVIDENCE-* code (exit 2).
    """
    from tenantkeys.evidence.bundle import payload_index
    from tenantkeys.evidence.verify import verify_file

    verdicts = verify_file(
        bundle,
        payloads=payload_index(read_payloads(payload_files)),
        trust=read_certificates(tsa_files) or None,
    )
    passed = all(v.ok for v in verdicts)
    if as_json:
        emit({"valid": passed, "verdicts": [v.to_json() for v in verdicts]})
    else:
        for verdict in verdicts:
            click.echo(verdict.line())
        total = sum(v.ok for v in verdicts)
        click.echo(f"{total} of {len(verdicts)} signatures valid", err=not passed)
    if not passed:
        sys.exit(EXIT_NOT_VALID)
