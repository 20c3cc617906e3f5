"""Live migration between providers (``keys rewrap``) against the loopback KMS servers.

Each test creates keys under one provider, re-wraps them under another, then proves that
every key opens through the new provider alone (the old one stopped, denied or its master key
moved away), that old signatures and ciphertexts still verify and decrypt, and that an
interrupted run resumed later wraps no row twice and skips none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tenantkeys.config import load_settings
from tenantkeys.errors import ConfigurationError, ErrorCode, KmsConfigError, TenantKeysError
from tenantkeys.keys.kms import check_providers
from tenantkeys.keys.model import KeyVersion, Purpose
from tenantkeys.keys.rewrap import Outcome, Rewrapper
from tenantkeys.keys.service import KeyService
from tenantkeys.providers import KmsProvider, create_provider
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.helpers import make_service
from tests.servers.fixtures import ProviderFactory

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
REDIS_DB = 9
TENANTS = [f"tenant-{i}" for i in range(6)]


class Crash(BaseException):
    """Stands for a killed process: not an Exception, so no per-row handler catches it."""


@pytest.fixture
def redis9() -> Iterator[tuple[redis.Redis, str]]:
    """A client on Redis DB 9 and a unique prefix; every key under it is deleted afterwards."""
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    prefix = f"tkrewrap-{uuid.uuid4().hex[:10]}"
    yield client, prefix
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    client.close()


def populate(service: KeyService) -> dict[str, Any]:
    """Keys for every tenant, signatures and ciphertexts, and one rotation of each purpose."""
    service.create_keys(TENANTS[0])
    old = {"sig": [], "enc": []}
    old["sig"].append(
        (TENANTS[0], b"before rotation", service.sign(TENANTS[0], b"before rotation").jws)
    )
    old["enc"].append((TENANTS[0], b"old secret", service.encrypt(TENANTS[0], b"old secret")))
    service.rotate(TENANTS[0], "signing")  # the retired signing row loses its secret
    service.rotate(TENANTS[0], "encryption")  # the retired encryption row keeps it: rewrapped too
    for tenant in TENANTS:
        service.create_keys(tenant)
        payload = f"invoice of {tenant}".encode()
        old["sig"].append((tenant, payload, service.sign(tenant, payload).jws))
        old["enc"].append((tenant, payload, service.encrypt(tenant, payload, b"aad")))
    return old


def wrapped_rows(service: KeyService) -> list[KeyVersion]:
    return [v for t in TENANTS for v in service.store.versions(t) if v.wrapped_data_key]


def assert_all_open(service: KeyService, old: dict[str, Any]) -> None:
    """Every old signature verifies, every old ciphertext decrypts, every tenant signs."""
    for tenant, payload, jws in old["sig"]:
        service.verify(tenant, payload, jws)
    for i, (tenant, payload, blob) in enumerate(old["enc"]):
        assert service.decrypt(tenant, blob, b"" if i == 0 else b"aad") == payload
    for tenant in TENANTS:
        signature = service.sign(tenant, b"after the move")
        service.verify(tenant, b"after the move", signature.jws)


def only(provider: KmsProvider, db: str, client: redis.Redis, prefix: str) -> KeyService:
    """A service that knows the target provider and nothing else (no fallback possible)."""
    return make_service(db, provider, redis_client=client, prefix=prefix)


MIGRATIONS = [("local", "vault"), ("aws", "gcp"), ("local", "azure"), ("vault", "aws")]


@pytest.mark.parametrize(("source_name", "target_name"), MIGRATIONS)
def test_rewrap_moves_every_key_to_the_new_provider(
    source_name: str,
    target_name: str,
    provider_factory: ProviderFactory,
    postgres_url: str,
    redis9: tuple[redis.Redis, str],
    tmp_path: Path,
) -> None:
    client, prefix = redis9
    source, target = provider_factory(source_name), provider_factory(target_name)
    before = make_service(postgres_url, source, redis_client=client, prefix=prefix)
    old = populate(before)
    rows = wrapped_rows(before)
    assert len(rows) == 2 * len(TENANTS) + 1  # + the retired encryption version
    migrator = make_service(
        postgres_url, target, redis_client=client, prefix=prefix, extra_providers=(source,)
    )
    report = Rewrapper(migrator, target_name, batch_size=4).run()
    assert report.to_dict()["complete"] is True
    assert (report.rewrapped, report.failed, report.remaining) == (len(rows), 0, 0)
    target_calls = migrator.providers.get(target_name).calls
    assert target_calls["encrypt"] == len(rows) and target_calls["decrypt"] == len(rows)

    after = wrapped_rows(migrator)
    assert {(v.provider, v.provider_key_id) for v in after} == {(target_name, target.key_id)}
    by_row = {(v.tenant_id, v.purpose, v.version): v for v in rows}
    for row in after:
        was = by_row[(row.tenant_id, row.purpose, row.version)]
        assert row.wrapped_secret == was.wrapped_secret  # the sealed secret never changes
        with pytest.raises(TenantKeysError):  # the old provider cannot open the new data key
            source.decrypt(row.wrapped_data_key or b"", row.context)

    assert migrator.l2 is not None
    for tenant in TENANTS:  # no worker can pick up an old wrapped record from L2
        for purpose in Purpose:
            cached = migrator.l2.get_active(tenant, purpose)
            assert cached is None or cached.provider == target_name

    # The old provider is gone: stopped (aws, vault) or its master key moved away (local).
    fresh = only(provider_factory(target_name), postgres_url, client, prefix)
    if source_name == "local":
        master = tmp_path / "master.key"
        master.rename(tmp_path / "master.key.moved")
        assert_all_open(fresh, old)
    else:
        with provider_factory.outage(source_name):
            assert_all_open(fresh, old)
    assert fresh.providers.get(target_name).total_calls > 0
    for service in (before, migrator, fresh):
        service.close()


def test_rows_created_or_rotated_during_the_run_are_handled(
    provider_factory: ProviderFactory, sqlite_url: str, redis9: tuple[redis.Redis, str]
) -> None:
    client, prefix = redis9
    local, vault = provider_factory("local"), provider_factory("vault")
    old_side = make_service(sqlite_url, local, redis_client=client, prefix=prefix)
    for tenant in TENANTS[:3]:
        old_side.create_keys(tenant, ["signing"])
    migrator = make_service(
        sqlite_url, vault, redis_client=client, prefix=prefix, extra_providers=(local,)
    )
    seen: list[str] = []

    def meanwhile(row: KeyVersion, _outcome: Outcome) -> None:
        seen.append(row.tenant_id)
        if len(seen) == 1:  # a worker still on the old provider rotates a key not yet moved ...
            old_side.rotate(TENANTS[1], "signing")
            old_side.create_keys("late-tenant")  # ... and creates new ones

    report = Rewrapper(migrator, "vault", batch_size=3, on_row=meanwhile).run()
    # tenant-1 v1 retired under us (skipped), its v2 and late-tenant's two keys picked up.
    assert (report.rewrapped, report.skipped_changed, report.failed) == (5, 1, 0)
    assert report.complete
    rows = [v for t in [*TENANTS[:3], "late-tenant"] for v in migrator.store.versions(t)]
    assert {v.provider for v in rows if v.wrapped_data_key} == {"vault"}
    for service in (old_side, migrator):
        service.close()


def test_interrupted_rewrap_resumes_without_double_or_missed_rows(
    provider_factory: ProviderFactory, sqlite_url: str, redis9: tuple[redis.Redis, str]
) -> None:
    client, prefix = redis9
    local, vault = provider_factory("local"), provider_factory("vault")
    seed = make_service(sqlite_url, local, redis_client=client, prefix=prefix)
    for tenant in TENANTS:
        seed.create_keys(tenant)
    total = len(wrapped_rows(seed))
    swaps: list[tuple[str, str, int]] = []

    def run(**kwargs: Any) -> tuple[KeyService, Rewrapper]:
        service = make_service(
            sqlite_url, vault, redis_client=client, prefix=prefix, extra_providers=(local,)
        )
        original = service.store.replace_wrapping

        def counted(version: KeyVersion, *args: Any) -> bool:
            done = original(version, *args)
            if done:
                swaps.append((version.tenant_id, version.purpose.value, version.version))
            return done

        service.store.replace_wrapping = counted  # type: ignore[method-assign]
        return service, Rewrapper(service, "vault", batch_size=4, **kwargs)

    # 1. A staged run that stops after 3 rows.
    first, rewrapper = run(limit=3)
    staged = rewrapper.run()
    assert (staged.rewrapped, staged.stopped_at_limit, staged.remaining) == (3, True, total - 3)
    # 2. A run killed between rows, after 4 more.
    second, rewrapper = run(on_row=lambda *_: len(swaps) >= 7 and _crash())
    with pytest.raises(Crash):
        rewrapper.run()
    # 3. A run killed in the middle of a row: wrapped by vault, not yet stored.
    third, rewrapper = run()
    real_encrypt = rewrapper.target.inner.encrypt

    def dies_on_second_call(plaintext: bytes, context: dict[str, str]) -> bytes:
        if rewrapper.target.calls["encrypt"] == 2:
            raise Crash
        return real_encrypt(plaintext, context)

    rewrapper.target.inner.encrypt = dies_on_second_call  # type: ignore[method-assign]
    try:
        with pytest.raises(Crash):
            rewrapper.run()
    finally:
        del rewrapper.target.inner.encrypt  # the provider object is shared by every run
    # 4. Resumed to completion.
    last, rewrapper = run()
    final = rewrapper.run()

    assert len(swaps) == total and len(set(swaps)) == total  # each row swapped exactly once
    assert (final.rewrapped, final.already_done, final.failed) == (total - 8, 8, 0)
    assert final.complete
    assert {v.provider for v in wrapped_rows(last)} == {"vault"}
    fresh = only(provider_factory("vault"), sqlite_url, client, prefix)
    for tenant in TENANTS:
        fresh.sign(tenant, b"after")
    for service in (seed, first, second, third, last, fresh):
        service.close()


def _crash() -> None:
    raise Crash


def test_a_failing_row_is_reported_and_the_others_move(
    provider_factory: ProviderFactory, sqlite_url: str, redis9: tuple[redis.Redis, str]
) -> None:
    client, prefix = redis9
    local, vault = provider_factory("local"), provider_factory("vault")
    seed = make_service(sqlite_url, local, redis_client=client, prefix=prefix)
    for tenant in TENANTS[:3]:
        seed.create_keys(tenant, ["signing"])
    broken = seed.store.active(TENANTS[1], Purpose.SIGNING)
    assert broken is not None and broken.wrapped_data_key is not None
    # Another tenant's wrapped data key: opening it under this row's context must fail.
    other = seed.store.active(TENANTS[2], Purpose.SIGNING)
    assert other is not None and other.wrapped_data_key is not None
    seed.store.replace_wrapping(broken, other.wrapped_data_key, "local", local.key_id)
    migrator = make_service(sqlite_url, vault, extra_providers=(local,))
    report = Rewrapper(migrator, "vault").run()
    assert (report.rewrapped, report.failed, report.remaining) == (2, 1, 1)
    assert not report.complete
    failure = report.to_dict()["failures"][0]
    assert (
        failure["tenant_id"] == TENANTS[1] and failure["code"] == ErrorCode.KMS_INVALID_CIPHERTEXT
    )
    row = migrator.store.active(TENANTS[1], Purpose.SIGNING)
    assert row is not None and row.provider == "local"  # left exactly as it was
    for service in (seed, migrator):
        service.close()


def test_a_wrapping_that_does_not_verify_is_never_stored(
    provider_factory: ProviderFactory, sqlite_url: str
) -> None:
    local, vault = provider_factory("local"), provider_factory("vault")
    seed = make_service(sqlite_url, local)
    seed.create_keys(TENANTS[0])
    migrator = make_service(sqlite_url, vault, extra_providers=(local,))
    rewrapper = Rewrapper(migrator, "vault")
    real_encrypt = vault.encrypt

    def wrong_key(plaintext: bytes, context: dict[str, str]) -> bytes:
        return real_encrypt(bytes(len(plaintext)), context)  # wraps a different data key

    vault.encrypt = wrong_key  # type: ignore[method-assign]
    report = rewrapper.run()
    assert (report.rewrapped, report.failed) == (0, 2)
    assert {f.code for f in report.failures} == {ErrorCode.KMS_INVALID_CIPHERTEXT}
    assert {v.provider for v in migrator.store.versions(TENANTS[0])} == {"local"}
    seed.sign(TENANTS[0], b"still opens")
    for service in (seed, migrator):
        service.close()


# -- through the command line and the settings ------------------------------------------


def settings_env(factory: ProviderFactory, name: str, tmp_path: Path) -> dict[str, str]:
    """``TENANTKEYS_*`` settings of provider ``name`` that reach its loopback server."""
    if name == "local":
        return {"TENANTKEYS_LOCAL_MASTER_KEY_FILE": str(tmp_path / "master.key")}
    server = factory.server(name)
    if name == "aws":
        return {
            "TENANTKEYS_AWS_KMS_KEY_ID": server.key_id,
            "TENANTKEYS_AWS_REGION": "us-east-1",
            "TENANTKEYS_AWS_ENDPOINT_URL": server.endpoint,
        }
    if name == "vault":
        return {"TENANTKEYS_VAULT_ADDR": server.addr, "TENANTKEYS_VAULT_KEY_NAME": server.key_name}
    if name == "gcp":
        return {
            "TENANTKEYS_GCP_KEY_NAME": server.key_name,
            "TENANTKEYS_GCP_ENDPOINT": f"insecure://{server.target}",
        }
    raise ValueError(f"{name} has no settings-only test path")


def rewrap_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenantkeys", "keys", "rewrap", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_rewrap_in_stages_with_the_previous_provider(
    provider_factory: ProviderFactory,
    sqlite_url: str,
    redis9: tuple[redis.Redis, str],
    tmp_path: Path,
) -> None:
    client, prefix = redis9
    local = provider_factory("local")
    provider_factory("vault")  # sets VAULT_TOKEN for the children
    seed = make_service(sqlite_url, local, redis_client=client, prefix=prefix)
    for tenant in TENANTS[:4]:
        seed.create_keys(tenant)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKEYS_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT / "src"),
            "TENANTKEYS_DATABASE_URL": sqlite_url,
            "TENANTKEYS_REDIS_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
            "TENANTKEYS_REDIS_PREFIX": prefix,
            "TENANTKEYS_EMBEDDED_REDIS": "false",
            "TENANTKEYS_KMS_PROVIDER": "vault",
            **settings_env(provider_factory, "local", tmp_path),
            **settings_env(provider_factory, "vault", tmp_path),
        }
    )
    # Without the previous provider, rows on `local` fail loudly: no silent fallback.
    refused = rewrap_cli(env, tmp_path, "--to", "vault")
    assert refused.returncode == 1, refused.stderr
    summary = json.loads(refused.stdout)
    assert summary["failed"] == 8 and summary["rewrapped"] == 0
    assert {f["code"] for f in summary["failures"]} == {ErrorCode.CONFIG_MISSING_SETTING}
    assert "TENANTKEYS_PREVIOUS_KMS_PROVIDER" in summary["failures"][0]["message"]
    # A target that is not configured is refused before any row is touched.
    wrong = rewrap_cli(
        {**env, "TENANTKEYS_PREVIOUS_KMS_PROVIDER": "local"}, tmp_path, "--to", "aws"
    )
    assert wrong.returncode == 2 and ErrorCode.CONFIG_MISSING_SETTING in wrong.stderr

    env["TENANTKEYS_PREVIOUS_KMS_PROVIDER"] = "local"
    staged = rewrap_cli(env, tmp_path, "--to", "vault", "--limit", "5", "--batch-size", "2")
    assert staged.returncode == 0, staged.stderr
    first = json.loads(staged.stdout)
    assert (first["rewrapped"], first["remaining"], first["complete"]) == (5, 3, False)
    assert "re-wrapping under vault" in staged.stderr  # the progress bar
    done = rewrap_cli(env, tmp_path, "--to", "vault")
    assert done.returncode == 0, done.stderr
    second = json.loads(done.stdout)
    assert (second["rewrapped"], second["already_done"], second["complete"]) == (3, 5, True)
    assert second["rows_per_second"] > 0
    seed.close()


def test_previous_provider_is_validated_at_start(tmp_path: Path) -> None:
    vault = {"vault_addr": "http://127.0.0.1:1", "vault_key_name": "k", "kms_provider": "vault"}
    with pytest.raises(ConfigurationError) as unknown:
        load_settings(**vault, previous_kms_provider="nope")
    assert unknown.value.code == ErrorCode.CONFIG_UNKNOWN_PROVIDER
    with pytest.raises(ConfigurationError) as missing:
        check_providers(load_settings(**vault, previous_kms_provider="aws"))
    assert "TENANTKEYS_AWS_KMS_KEY_ID" in missing.value.message
    both = load_settings(**vault, previous_kms_provider="local")
    assert both.configured_providers == ("vault", "local")
    assert load_settings(**vault, previous_kms_provider="").configured_providers == ("vault",)
    with pytest.raises(ConfigurationError, match="TENANTKEYS_PREVIOUS_KMS_PROVIDER"):
        load_settings(**vault).provider_values("local")


def test_gcp_insecure_endpoint_is_for_loopback_only() -> None:
    name = "projects/p/locations/global/keyRings/r/cryptoKeys/k"
    for endpoint in ("insecure://kms.example.com:443", "insecure://10.0.0.1:80", "insecure://x"):
        with pytest.raises(KmsConfigError, match="loopback"):
            create_provider("gcp", {"key_name": name, "endpoint": endpoint})
