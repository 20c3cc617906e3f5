"""``tenantkeys keys create|list|rotate|revoke|invalidate|rewrap``.

Only ``create`` may start a new key store; the others work on the store the one-key-store
rule finds (README, "Where the keys live"), or say where they looked.
"""

from __future__ import annotations

import sys

import click

from tenantkeys.cli import EXIT_ERROR
from tenantkeys.cli.context import emit, runtime, settings, version_info
from tenantkeys.config import masked_url
from tenantkeys.errors import CacheUnavailable, ConfigurationError, ErrorCode, InvalidRequest
from tenantkeys.keys.model import KeyVersion, Purpose, validate_tenant_id
from tenantkeys.keys.redis_cache import WrappedKeyCache
from tenantkeys.keys.runtime import Runtime, redis_available, redis_client
from tenantkeys.providers import SUPPORTED

PURPOSE_HELP = "signing, encryption or all"


def _purposes(value: str) -> list[Purpose]:
    """``--purpose``: a bad one is TK-INVALID-PURPOSE, as everywhere else a purpose is named."""
    if value == "all":
        return list(Purpose)
    try:
        return [Purpose(value)]
    except ValueError:
        raise InvalidRequest(
            f"invalid --purpose {value[:40]!r}: use {PURPOSE_HELP}",
            code=ErrorCode.INVALID_PURPOSE,
        ) from None


def warn_not_broadcast(found: Runtime, tenant_id: str, purposes: list[str], what: str) -> None:
    """Say what a rotation or revocation could not tell other processes, and what bounds it."""
    if found.service.l2 is not None and redis_available(found.redis):
        return
    config = found.settings
    again = f"tenantkeys keys invalidate --tenant {tenant_id}" + (
        f" --purpose {purposes[0]}" if len(purposes) == 1 else ""
    )
    safety = (
        "; meanwhile a process that cannot reach Redis either checks the key store every "
        f"TENANTKEYS_KEY_CONFIRM_SECONDS ({config.key_confirm_seconds:g} s) and drops it"
        if config.key_confirm_redis_down == "safety"
        else ""
    )
    click.echo(
        f"warning: Redis at {masked_url(config.redis_url)} does not answer, so the change to "
        f"{what} was not broadcast: processes that cached the old key sign with it until "
        f"`{again}` succeeds (run it once Redis answers; they then drop it within "
        f"TENANTKEYS_KEY_CONFIRM_SECONDS, {config.key_confirm_seconds:g} s), else for up to "
        f"TENANTKEYS_CACHE_TTL_SECONDS ({config.cache_ttl_seconds} s) plus, from Redis's "
        f"cached record, TENANTKEYS_L2_CACHE_TTL_SECONDS ({config.l2_cache_ttl_seconds} s)"
        f"{safety} (docs/reliability.md#revocation-delay)",
        err=True,
    )


@click.group("keys")
def keys_group() -> None:
    """Create, list, rotate and revoke a tenant's keys."""


@keys_group.command("create")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--purpose", default="all", show_default=True, help=PURPOSE_HELP)
def keys_create(tenant_id: str, purpose: str) -> None:
    """Create the tenant's keys (existing ones are returned unchanged)."""
    created = runtime().service.create_keys(tenant_id, _purposes(purpose))
    emit([version_info(v) for v in created])


@keys_group.command("list")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def keys_list(tenant_id: str, as_json: bool) -> None:
    """Every version of the tenant's keys, with status."""
    versions = runtime(create=False).service.list_keys(tenant_id)
    if not versions:
        click.echo(f"note: tenant {tenant_id!r} has no keys in this key store", err=True)
    if as_json:
        emit([version_info(v) for v in versions])
        return
    click.echo(f"{'PURPOSE':<11} {'VER':>3} {'STATUS':<8} {'ALG':<7} {'ROTATE AFTER':<20} KID")
    for v in versions:
        click.echo(
            f"{v.purpose.value:<11} {v.version:>3} {v.status.value:<8} {v.algorithm:<7} "
            f"{v.rotate_after:%Y-%m-%d %H:%M}    {v.kid}"
        )


@keys_group.command("rotate")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--purpose", default="all", show_default=True, help=PURPOSE_HELP)
def keys_rotate(tenant_id: str, purpose: str) -> None:
    """Make a new active version now; the old one retires (signatures keep verifying)."""
    purposes = _purposes(purpose)
    found = runtime(create=False)
    service = found.service
    results = [service.rotate(tenant_id, p) for p in purposes]
    rotated = [r.purpose for r in results if r.rotated]
    if rotated:
        what = f"tenant {tenant_id!r}'s {' and '.join(rotated)} key"
        warn_not_broadcast(found, tenant_id, rotated, what)
    emit(
        [
            {
                "tenant_id": r.tenant_id,
                "purpose": r.purpose,
                "rotated": r.rotated,
                "old_version": r.old_version,
                "new_version": r.new_version,
                "reason": r.reason,
            }
            for r in results
        ]
    )


@keys_group.command("revoke")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--kid", required=True)
def keys_revoke(tenant_id: str, kid: str) -> None:
    """Revoke a key version: its signatures stop verifying; an active one is replaced."""
    found = runtime(create=False)
    revoked = found.service.revoke(tenant_id, kid)
    what = f"tenant {tenant_id!r}'s key {kid} (revoked)"
    warn_not_broadcast(found, tenant_id, [revoked.purpose.value], what)
    emit(version_info(revoked))


@keys_group.command("invalidate")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--purpose", default="all", show_default=True, help=PURPOSE_HELP)
def keys_invalidate(tenant_id: str, purpose: str) -> None:
    """Make every process drop its cached copy of the tenant's key (within
    TENANTKEYS_KEY_CONFIRM_SECONDS): for a rotate or revoke made while Redis was down."""
    purposes = _purposes(purpose)
    config = settings()
    client = redis_client(config)
    try:
        if not redis_available(client):
            raise CacheUnavailable(
                f"Redis does not answer at {masked_url(config.redis_url)}: nothing was "
                "invalidated; run this again once it does"
            )
        cache = WrappedKeyCache(client, config.redis_prefix, config.l2_cache_ttl_seconds)
        tenant = validate_tenant_id(tenant_id)
        done = [p.value for p in purposes if cache.invalidate(tenant, p.value)]
    finally:
        client.close()
    emit({"tenant_id": tenant_id, "invalidated": done})
    if len(done) != len(purposes):
        sys.exit(EXIT_ERROR)


@keys_group.command("rewrap")
@click.option("--to", "target", required=True, type=click.Choice(SUPPORTED), help="Provider.")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--limit", type=click.IntRange(0), help="Stop after N rows; run again to go on.")
def keys_rewrap(target: str, batch_size: int, limit: int | None) -> None:
    """Move every wrapped data key to another provider while workers keep signing.

    First set TENANTKEYS_KMS_PROVIDER to the new provider and TENANTKEYS_PREVIOUS_KMS_PROVIDER
    to the old one, with both providers' settings, in the workers and here; drop the previous
    one once this reports "complete": true. Exit status 1 when a row failed.
    """
    from tenantkeys.keys.rewrap import Outcome, Rewrapper

    loaded = settings()
    if target not in loaded.configured_providers:
        raise ConfigurationError(
            f"rewrap --to {target}: workers could not open keys wrapped by {target!r}; set "
            f"TENANTKEYS_KMS_PROVIDER={target} and TENANTKEYS_PREVIOUS_KMS_PROVIDER="
            f"{loaded.kms_provider} (with both providers' settings) here and in the workers "
            "first",
            code=ErrorCode.CONFIG_MISSING_SETTING,
        )
    if target != loaded.kms_provider:
        click.echo(
            f"warning: new keys are still wrapped by {loaded.kms_provider!r} "
            f"(TENANTKEYS_KMS_PROVIDER); they will need another rewrap",
            err=True,
        )
    rewrapper = Rewrapper(runtime(create=False).service, target, batch_size=batch_size, limit=limit)
    total = rewrapper.pending()
    with click.progressbar(
        length=total if limit is None else min(total, limit),
        label=f"re-wrapping under {target}",
        file=sys.stderr,
    ) as bar:

        def advance(_row: KeyVersion, _outcome: Outcome) -> None:
            bar.update(1)

        rewrapper.on_row = advance
        report = rewrapper.run()
    emit(report.to_dict())
    if report.failed:
        sys.exit(1)  # ran, but some rows failed (each is listed with its code)
