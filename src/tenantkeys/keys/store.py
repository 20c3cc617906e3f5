"""KeyStore: the SQL registry of key versions (SQLAlchemy 2 Core; SQLite or PostgreSQL).

Invariants the database enforces: versions unique per (tenant, purpose), kids unique per tenant,
at most one ``active`` version per (tenant, purpose). Rotation is a conditional update, so two
workers (or two Beat processes) rotating the same key for the same period rotate it once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine

from tenantkeys.errors import ErrorCode, StoreUnavailable
from tenantkeys.keys.model import KeyVersion, Purpose, Status
from tenantkeys.keys.schema import key_versions

_MIGRATIONS = Path(__file__).with_name("migrations")
_T = key_versions


def create_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so worker processes share it."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


class KeyStore:
    """Reads and writes :class:`KeyVersion` rows. Never holds plaintext secrets."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> KeyStore:
        return cls(create_engine(url))

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self._errors(), self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    # -- reads ---------------------------------------------------------------------------

    def active(self, tenant_id: str, purpose: Purpose) -> KeyVersion | None:
        query = sa.select(_T).where(
            _T.c.tenant_id == tenant_id, _T.c.purpose == purpose.value, _T.c.status == "active"
        )
        return self._one(query)

    def by_kid(self, tenant_id: str, kid: str) -> KeyVersion | None:
        return self._one(sa.select(_T).where(_T.c.tenant_id == tenant_id, _T.c.kid == kid))

    def get(self, tenant_id: str, purpose: Purpose, version: int) -> KeyVersion | None:
        return self._one(
            sa.select(_T).where(
                _T.c.tenant_id == tenant_id,
                _T.c.purpose == purpose.value,
                _T.c.version == version,
            )
        )

    def versions(self, tenant_id: str, purpose: Purpose | None = None) -> list[KeyVersion]:
        query = sa.select(_T).where(_T.c.tenant_id == tenant_id)
        if purpose is not None:
            query = query.where(_T.c.purpose == purpose.value)
        return self._all(query.order_by(_T.c.purpose, _T.c.version))

    def due(
        self, now: datetime, *, limit: int = 500, after_id: int = 0
    ) -> list[tuple[int, KeyVersion]]:
        """Active versions past ``rotate_after``, in id order, one page after ``after_id``."""
        query = (
            sa.select(_T)
            .where(_T.c.status == "active", _T.c.rotate_after <= now, _T.c.id > after_id)
            .order_by(_T.c.id)
            .limit(limit)
        )
        with self._errors(), self.engine.connect() as conn:
            return [(row.id, _to_version(row)) for row in conn.execute(query)]

    def needing_rewrap(
        self, provider: str, provider_key_id: str, *, limit: int = 200
    ) -> list[KeyVersion]:
        """Versions still holding a secret that is not wrapped under (provider, key id)."""
        query = (
            sa.select(_T)
            .where(
                _T.c.wrapped_data_key.is_not(None),
                sa.or_(_T.c.provider != provider, _T.c.provider_key_id != provider_key_id),
            )
            .order_by(_T.c.id)
            .limit(limit)
        )
        return self._all(query)

    def stats(self, now: datetime) -> dict[str, Any]:
        """Counts for metrics: overdue active keys and the oldest active key's creation time."""
        active = _T.c.status == "active"
        query = sa.select(
            sa.func.count().filter(active),
            sa.func.count().filter(active, _T.c.rotate_after <= now),
            sa.func.min(_T.c.created_at).filter(active),
            sa.func.min(_T.c.rotate_after).filter(active),
        )
        with self._errors(), self.engine.connect() as conn:
            total, overdue, oldest, next_rotation = conn.execute(query).one()
        return {
            "active_keys": int(total),
            "overdue": int(overdue),
            "oldest_active_created_at": oldest,
            "next_rotation_at": next_rotation,
        }

    # -- writes --------------------------------------------------------------------------

    def add_first(self, versions: Sequence[KeyVersion]) -> bool:
        """Insert version-1 rows in one transaction; ``False`` if a concurrent create won."""
        try:
            with self._errors(), self.engine.begin() as conn:
                conn.execute(_T.insert(), [_to_row(v) for v in versions])
        except sa.exc.IntegrityError:
            return False
        return True

    def rotate(self, current: KeyVersion, new: KeyVersion, now: datetime) -> bool:
        """Retire ``current`` and insert ``new`` atomically, only if ``current`` is still active.

        Returns ``False`` (and changes nothing) when another rotation got there first.
        A retired signing version loses its wrapped secret: its private key is destroyed.
        """
        try:
            with self._errors(), self.engine.begin() as conn:
                if not self._retire(conn, current, Status.RETIRED, now):
                    return False
                conn.execute(_T.insert(), [_to_row(new)])
        except sa.exc.IntegrityError:
            return False
        return True

    def revoke(self, version: KeyVersion, now: datetime, replacement: KeyVersion | None) -> bool:
        """Mark ``version`` revoked (destroying its secret); insert ``replacement`` if given."""
        try:
            with self._errors(), self.engine.begin() as conn:
                if not self._retire(conn, version, Status.REVOKED, now):
                    return False
                if replacement is not None:
                    conn.execute(_T.insert(), [_to_row(replacement)])
        except sa.exc.IntegrityError:
            return False
        return True

    def replace_wrapping(
        self, version: KeyVersion, wrapped_data_key: bytes, provider: str, provider_key_id: str
    ) -> bool:
        """Swap the wrapped data key (rewrap), only if the row still has the one we read."""
        query = (
            _T.update()
            .where(
                _T.c.tenant_id == version.tenant_id,
                _T.c.purpose == version.purpose.value,
                _T.c.version == version.version,
                _T.c.wrapped_data_key == version.wrapped_data_key,
            )
            .values(
                wrapped_data_key=wrapped_data_key,
                provider=provider,
                provider_key_id=provider_key_id,
            )
        )
        with self._errors(), self.engine.begin() as conn:
            return conn.execute(query).rowcount == 1

    # -- helpers -------------------------------------------------------------------------

    def _retire(self, conn: Connection, version: KeyVersion, status: Status, now: datetime) -> bool:
        changes: dict[str, Any] = {"status": status.value}
        if status is Status.REVOKED:
            changes.update(revoked_at=now, wrapped_secret=None, wrapped_data_key=None)
        else:
            changes["retired_at"] = now
            if version.purpose is Purpose.SIGNING:
                # Destroy the private key at retirement; the public key stays for verification.
                changes.update(wrapped_secret=None, wrapped_data_key=None)
        query = (
            _T.update()
            .where(
                _T.c.tenant_id == version.tenant_id,
                _T.c.purpose == version.purpose.value,
                _T.c.version == version.version,
                _T.c.status == version.status.value,
            )
            .values(**changes)
        )
        return conn.execute(query).rowcount == 1

    def _one(self, query: sa.Select[Any]) -> KeyVersion | None:
        with self._errors(), self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _to_version(row) if row is not None else None

    def _all(self, query: sa.Select[Any]) -> list[KeyVersion]:
        with self._errors(), self.engine.connect() as conn:
            return [_to_version(row) for row in conn.execute(query)]

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailable(
                f"key store unreachable ({type(exc.orig).__name__ if exc.orig else 'error'})",
                code=ErrorCode.STORE_UNAVAILABLE,
            ) from exc


def _to_row(version: KeyVersion) -> dict[str, Any]:
    return {
        "tenant_id": version.tenant_id,
        "purpose": version.purpose.value,
        "version": version.version,
        "kid": version.kid,
        "algorithm": version.algorithm,
        "status": version.status.value,
        "public_key": version.public_key,
        "wrapped_secret": version.wrapped_secret,
        "wrapped_data_key": version.wrapped_data_key,
        "provider": version.provider,
        "provider_key_id": version.provider_key_id,
        "created_at": version.created_at,
        "rotate_after": version.rotate_after,
        "retired_at": version.retired_at,
        "revoked_at": version.revoked_at,
    }


def _to_version(row: sa.Row[Any]) -> KeyVersion:
    return KeyVersion(
        tenant_id=row.tenant_id,
        purpose=Purpose(row.purpose),
        version=row.version,
        kid=row.kid,
        algorithm=row.algorithm,
        status=Status(row.status),
        public_key=bytes(row.public_key) if row.public_key is not None else None,
        wrapped_secret=bytes(row.wrapped_secret) if row.wrapped_secret is not None else None,
        wrapped_data_key=bytes(row.wrapped_data_key) if row.wrapped_data_key is not None else None,
        provider=row.provider,
        provider_key_id=row.provider_key_id,
        created_at=row.created_at,
        rotate_after=row.rotate_after,
        retired_at=row.retired_at,
        revoked_at=row.revoked_at,
    )
