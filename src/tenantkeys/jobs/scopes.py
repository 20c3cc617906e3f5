"""Per-producer tenant scopes: which tenants each producer may sign for.

``TENANTKEYS_PRODUCER_SCOPES_FILE`` names a JSON file::

    {"producers": [
      {"name": "billing", "token_sha256": "<64 hex>", "tenants": ["acme", "globex"]},
      {"name": "evidence-java", "certificate_subject": "CN=evidence-java,O=Example Corp",
       "tenants": ["*"]}
    ]}

A producer is known by an API token (its SHA-256, for the HTTP front door) or by the subject
of the certificate it signs task messages with (the queue path, with message signing on).
``"*"`` means every tenant. The file is read once; a bad one is ``TK-CONFIG-INVALID`` naming
the entry and why. A job naming a tenant outside its producer's scope is refused with
``TK-SCOPE-DENIED`` and counted in ``tenantkeys_scope_refusals_total{producer, path}``:
the label is the producer's name, never a tenant id. :class:`JobOwners` records which
producer used a job id first, so another's job under that id is refused (``TK-JOB-ID-CONFLICT``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from cryptography import x509
from cryptography.x509.oid import NameOID

from tenantkeys import telemetry
from tenantkeys.config import Settings
from tenantkeys.errors import (
    ConfigurationError,
    ErrorCode,
    InvalidRequest,
    JobIdConflict,
    ScopeDenied,
)
from tenantkeys.keys.model import validate_tenant_id

__all__ = [
    "ALL_TENANTS",
    "UNLISTED",
    "JobIdConflict",
    "JobOwners",
    "Producer",
    "ProducerScopes",
    "ScopeDenied",
    "count_job_id_conflict",
    "count_refusal",
    "normalized_subject",
]

#: The scope entry meaning "every tenant".
ALL_TENANTS = "*"
#: The metric label of a trusted signer that is in no entry, and the owner of the front door's
#: job ids when it publishes under no entry's certificate; no producer may take the name.
UNLISTED = "unlisted"
#: Producer names are metric label values: short, from a fixed alphabet.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: A scopes file is a short list; anything larger is a mistake (or not a scopes file).
_MAX_FILE_BYTES = 1_048_576
#: RFC 4514 attribute types are case-insensitive; cryptography knows only the upper-case ones.
_LOWER_CASE_TYPES = {
    "cn": NameOID.COMMON_NAME,
    "c": NameOID.COUNTRY_NAME,
    "l": NameOID.LOCALITY_NAME,
    "st": NameOID.STATE_OR_PROVINCE_NAME,
    "street": NameOID.STREET_ADDRESS,
    "o": NameOID.ORGANIZATION_NAME,
    "ou": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "dc": NameOID.DOMAIN_COMPONENT,
    "uid": NameOID.USER_ID,
}
_FIELDS = frozenset({"name", "token_sha256", "certificate_subject", "tenants"})

#: Where a job came in: the broker (workers check it) or the HTTP front door.
RefusalPath = telemetry.JobPath


@dataclass(frozen=True)
class Producer:
    """One producer of the scopes file: its name and the tenants it may sign for."""

    name: str
    #: None means every tenant (``"*"``).
    tenants: frozenset[str] | None

    def allows(self, tenant_id: str) -> bool:
        """Whether this producer may sign for ``tenant_id``."""
        return self.tenants is None or tenant_id in self.tenants


class ProducerScopes:
    """The producers of a scopes file, found by token or by certificate subject."""

    def __init__(
        self,
        by_token: Mapping[bytes, Producer],
        by_subject: Mapping[tuple[tuple[tuple[str, str], ...], ...], Producer],
    ) -> None:
        self._by_token = dict(by_token)
        self._by_subject = dict(by_subject)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProducerScopes | None:
        """The scopes of ``TENANTKEYS_PRODUCER_SCOPES_FILE``; None when it is unset (off)."""
        path = settings.producer_scopes_file
        return None if path is None else cls.from_file(path)

    @classmethod
    def from_file(cls, path: Path) -> ProducerScopes:
        """Read and check a scopes file; :class:`ConfigurationError` says which entry and why."""
        where = f"TENANTKEYS_PRODUCER_SCOPES_FILE ({path})"
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise _invalid(
                f"{where} cannot be read ({exc.strerror or type(exc).__name__})"
            ) from None
        if len(raw) > _MAX_FILE_BYTES:
            raise _invalid(f"{where} is larger than {_MAX_FILE_BYTES} bytes")
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _invalid(f"{where} is not JSON ({type(exc).__name__})") from None
        if not isinstance(document, dict) or set(document) != {"producers"}:
            raise _invalid(f'{where} must be a JSON object with one key, "producers"')
        entries = document["producers"]
        if not isinstance(entries, list):
            raise _invalid(f'{where}: "producers" must be a list')
        by_token: dict[bytes, Producer] = {}
        by_subject: dict[tuple[tuple[tuple[str, str], ...], ...], Producer] = {}
        names: set[str] = set()
        for index, entry in enumerate(entries):
            label = f"{where}, producer #{index + 1}"
            producer, token, subject = _entry(entry, label)
            label = f"{where}, producer {producer.name!r}"
            if producer.name in names:
                raise _invalid(f"{label}: the name is used twice; names must be unique")
            names.add(producer.name)
            if token is not None:
                if token in by_token:
                    raise _invalid(f"{label}: the token is also {by_token[token].name!r}'s")
                by_token[token] = producer
            if subject is not None:
                if subject in by_subject:
                    other = by_subject[subject].name
                    raise _invalid(f"{label}: the certificate subject is also {other!r}'s")
                by_subject[subject] = producer
        return cls(by_token, by_subject)

    @property
    def producers(self) -> tuple[Producer, ...]:
        """Every producer of the file."""
        return (*self._by_token.values(), *self._by_subject.values())

    def by_token(self, token: str) -> Producer | None:
        """The producer whose token this is, or None."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = None
        for known, producer in self._by_token.items():
            # Constant time, and every entry compared: the answer's timing names no token.
            if hmac.compare_digest(known, digest):
                found = producer
        return found

    def by_subject(self, subject: str) -> Producer | None:
        """The producer of a certificate subject (RFC 4514), compared normalized; or None."""
        try:
            key = normalized_subject(subject)
        except ValueError:
            return None
        return self._by_subject.get(key)

    def check(
        self, producer: Producer, tenant_ids: Iterable[str], *, path: RefusalPath | None = None
    ) -> None:
        """Raise :class:`ScopeDenied` unless ``producer`` may sign for every tenant given.

        With ``path``, a refusal is also counted (``tenantkeys_scope_refusals_total``).
        """
        refused = sorted({t for t in tenant_ids if not producer.allows(t)})
        if not refused:
            return
        if path is not None:
            count_refusal(producer.name, path)
        others = f" and {len(refused) - 1} more" if len(refused) > 1 else ""
        raise ScopeDenied(
            f"producer {producer.name!r} may not sign for tenant {_shown(refused[0])}{others}; "
            "its scope is in TENANTKEYS_PRODUCER_SCOPES_FILE"
        )


class JobOwners:
    """Which producer used a job id first (``<prefix>:job-producer:<sha256>``, with a TTL).

    One registry for every path a job can come in by: the TTL is ``result_expires``, as long as
    a result under the id can be read.
    """

    def __init__(self, client: redis.Redis, prefix: str, ttl_seconds: int) -> None:
        self._client = client
        self._prefix = f"{prefix}:job-producer:"
        self._ttl = ttl_seconds

    def _key(self, job_id: str) -> str:
        # Hashed: a job id is the producer's text, of any length.
        return self._prefix + hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()

    def claim(self, job_id: str, producer: str) -> str | None:
        """Claim ``job_id`` for ``producer``; the other producer that holds it, else None."""
        key = self._key(job_id)
        # One round trip for a new id; a second only for an id seen before.
        if self._client.set(key, producer, nx=True, ex=self._ttl):
            return None
        return _other(self._client.get(key), producer)

    def owner_other_than(self, job_id: str, producer: str) -> str | None:
        """The producer holding ``job_id`` if it is not ``producer``; claims nothing."""
        return _other(self._client.get(self._key(job_id)), producer)


def _other(owner: object, producer: str) -> str | None:
    if owner is None:
        return None
    name = owner.decode() if isinstance(owner, bytes) else str(owner)
    return None if name == producer else name


def count_refusal(producer_name: str, path: RefusalPath) -> None:
    """Count one job refused for its producer's scope (``path``: ``queue`` or ``http``)."""
    telemetry.record_scope_refusal(producer_name, path)


def count_job_id_conflict(producer_name: str, path: RefusalPath) -> None:
    """Count one job refused because another producer used its job id first."""
    telemetry.record_job_id_conflict(producer_name, path)


def normalized_subject(subject: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """An RFC 4514 distinguished name as a comparable key; raises ValueError if unparsable.

    Attribute types by OID (``CN`` and ``2.5.4.3`` agree), values case-folded with inner
    white space collapsed (X.500 caseIgnoreMatch); the order of the RDNs is kept.
    """
    name = x509.Name.from_rfc4514_string(subject, _LOWER_CASE_TYPES)
    return tuple(
        tuple(
            sorted(
                (attribute.oid.dotted_string, " ".join(str(attribute.value).split()).casefold())
                for attribute in rdn
            )
        )
        for rdn in name.rdns
    )


def _entry(
    entry: Any, label: str
) -> tuple[Producer, bytes | None, tuple[tuple[tuple[str, str], ...], ...] | None]:
    if not isinstance(entry, dict):
        raise _invalid(f"{label} must be a JSON object")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise _invalid(f"{label}: unknown field(s) {', '.join(map(repr, unknown))}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _invalid(f'{label}: "name" must be 1-64 characters of A-Z a-z 0-9 . _ -')
    if name == UNLISTED:
        raise _invalid(f"{label}: {UNLISTED!r} is reserved (it counts certificates in no entry)")
    label = f"{label.rsplit(', producer', 1)[0]}, producer {name!r}"
    token, subject = entry.get("token_sha256"), entry.get("certificate_subject")
    if (token is None) == (subject is None):
        raise _invalid(f'{label}: give exactly one of "token_sha256" or "certificate_subject"')
    digest = None
    if token is not None:
        if not isinstance(token, str) or not _SHA256_HEX.fullmatch(token.lower()):
            raise _invalid(f'{label}: "token_sha256" must be 64 hex digits (sha256 of the token)')
        digest = bytes.fromhex(token)
    key = None
    if subject is not None:
        try:
            key = normalized_subject(subject) if isinstance(subject, str) else None
        except ValueError:
            key = None
        if not key:
            raise _invalid(
                f'{label}: "certificate_subject" must be an RFC 4514 name such as '
                '"CN=billing,O=Example Corp" (openssl x509 -noout -subject -nameopt RFC2253)'
            )
    return Producer(name, _tenants(entry.get("tenants"), label)), digest, key


def _tenants(value: object, label: str) -> frozenset[str] | None:
    if not isinstance(value, list) or not value:
        raise _invalid(f'{label}: "tenants" must be a non-empty list of tenant ids, or ["*"]')
    if ALL_TENANTS in value:
        if len(value) != 1:
            raise _invalid(f'{label}: "*" (every tenant) must be the only entry of "tenants"')
        return None
    tenants: set[str] = set()
    for tenant in value:
        try:
            tenants.add(validate_tenant_id(tenant))
        except InvalidRequest:
            raise _invalid(
                f"{label}: {_shown(tenant)} is not a tenant id (1-64 characters of "
                "A-Z a-z 0-9 . _ -, starting with a letter or digit)"
            ) from None
    return frozenset(tenants)


def _shown(value: object) -> str:
    """A tenant id fit for a message: printable, bounded."""
    return ascii(value)[:80]


def _invalid(message: str) -> ConfigurationError:
    return ConfigurationError(message, code=ErrorCode.CONFIG_INVALID)
