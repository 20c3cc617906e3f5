"""The KeyStore suite, on SQLite and on the PostgreSQL at 127.0.0.1:5432."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tenantkeys.errors import StoreUnavailable
from tenantkeys.keys.model import KeyVersion, Purpose, Status
from tenantkeys.keys.schema import key_versions
from tenantkeys.keys.store import KeyStore

pytestmark = pytest.mark.integration
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Iterator[KeyStore]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    made = KeyStore.from_url(url)
    made.migrate()
    made.migrate()  # idempotent
    yield made
    made.close()


def version(
    tenant: str = "acme",
    number: int = 1,
    purpose: Purpose = Purpose.SIGNING,
    status: Status = Status.ACTIVE,
    rotate_after: datetime | None = None,
) -> KeyVersion:
    return KeyVersion(
        tenant_id=tenant,
        purpose=purpose,
        version=number,
        kid=f"{tenant}-{purpose.value}-{number}",
        algorithm="EdDSA",
        status=status,
        created_at=NOW,
        rotate_after=rotate_after or NOW + timedelta(days=90),
        provider="local",
        provider_key_id="local:x",
        public_key=b"pub",
        wrapped_secret=b"ws",
        wrapped_data_key=b"wd" + bytes([number]),
    )


def test_round_trip_and_timezones(store: KeyStore) -> None:
    assert store.add_first([version()])
    found = store.active("acme", Purpose.SIGNING)
    assert found == version()
    assert found is not None and found.created_at.tzinfo is not None


def test_database_enforces_one_active_version(store: KeyStore) -> None:
    store.add_first([version()])
    row = {
        c.name: getattr(version(number=2), c.name, None)
        for c in key_versions.columns
        if c.name != "id"
    }
    row.update(purpose="signing", status="active")
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(key_versions.insert(), [row])  # bypasses the code: the index refuses it
    row["status"] = "retired"
    with store.engine.begin() as conn:
        conn.execute(key_versions.insert(), [row])
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(key_versions.insert(), [row])  # same (tenant, purpose, version)


def test_concurrent_first_create_has_one_winner(store: KeyStore) -> None:
    assert store.add_first([version()]) is True
    assert store.add_first([version().evolve(kid="other")]) is False


def test_conditional_rotation_happens_once_under_contention(store: KeyStore) -> None:
    store.add_first([version()])
    current = store.active("acme", Purpose.SIGNING)
    assert current is not None
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def rotate(i: int) -> None:
        barrier.wait()
        results.append(store.rotate(current, version(number=2).evolve(kid=f"k2-{i}"), NOW))

    threads = [threading.Thread(target=rotate, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    versions = store.versions("acme", Purpose.SIGNING)
    assert [(v.version, v.status) for v in versions] == [(1, Status.RETIRED), (2, Status.ACTIVE)]
    assert versions[0].wrapped_secret is None  # private key destroyed at retirement
    assert versions[0].public_key == b"pub"


def test_retired_encryption_key_keeps_its_secret(store: KeyStore) -> None:
    enc = version(purpose=Purpose.ENCRYPTION)
    store.add_first([enc])
    assert store.rotate(enc, version(number=2, purpose=Purpose.ENCRYPTION), NOW)
    old = store.get("acme", Purpose.ENCRYPTION, 1)
    assert old is not None and old.status is Status.RETIRED and old.wrapped_secret == b"ws"


def test_revoke_with_replacement(store: KeyStore) -> None:
    store.add_first([version()])
    current = store.active("acme", Purpose.SIGNING)
    assert current is not None
    assert store.revoke(current, NOW, version(number=2))
    revoked = store.by_kid("acme", current.kid)
    assert (
        revoked is not None and revoked.status is Status.REVOKED and revoked.wrapped_secret is None
    )
    assert store.revoke(current, NOW, None) is False  # already changed


def test_due_pages_through_overdue_active_keys(store: KeyStore) -> None:
    for i in range(7):
        store.add_first(
            [version(tenant=f"t{i}", rotate_after=NOW - timedelta(days=1) if i % 2 == 0 else None)]
        )
    seen, after = [], 0
    while page := store.due(NOW, limit=2, after_id=after):
        seen.extend(v.tenant_id for _, v in page)
        after = page[-1][0]
    assert seen == ["t0", "t2", "t4", "t6"]
    stats = store.stats(NOW)
    assert (stats["active_keys"], stats["overdue"]) == (7, 4)


def test_replace_wrapping_is_conditional(store: KeyStore) -> None:
    store.add_first([version()])
    current = store.active("acme", Purpose.SIGNING)
    assert current is not None
    assert store.replace_wrapping(current, b"new", "aws", "arn:x")
    assert store.replace_wrapping(current, b"newer", "aws", "arn:x") is False
    assert store.needing_rewrap("aws", "arn:x") == []
    assert [v.tenant_id for v in store.needing_rewrap("local", "local:x")] == ["acme"]


def test_unreachable_database_is_a_transient_error() -> None:
    store = KeyStore.from_url("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(StoreUnavailable):
        store.active("acme", Purpose.SIGNING)
