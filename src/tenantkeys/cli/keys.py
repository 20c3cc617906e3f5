"""``tenantkeys config check`` and ``tenantkeys keys create|list|rotate|revoke|rewrap``."""

from __future__ import annotations

import sys

import click

from tenantkeys.cli.context import emit, runtime, settings, version_info
from tenantkeys.config import masked_value
from tenantkeys.errors import ConfigurationError, ErrorCode
from tenantkeys.keys.kms import check_providers
from tenantkeys.keys.model import KeyVersion, Purpose, parse_purpose
from tenantkeys.providers import SUPPORTED

PURPOSES = click.Choice(["signing", "encryption", "all"])


def _purposes(value: str) -> list[Purpose]:
    return list(Purpose) if value == "all" else [parse_purpose(value)]


@click.group("config")
def config_group() -> None:
    """Settings."""


@config_group.command("check")
def config_check() -> None:
    """Validate settings and the provider; print the effective config (secrets masked)."""
    loaded = settings()
    # The configured providers' own view of their settings: every variable, defaults included.
    providers = {
        variable: masked_value(value)
        for checked in check_providers(loaded).values()
        for variable, value in checked.by_variable().items()
    }
    shown = {k: v for k, v in loaded.masked().items() if k not in providers} | providers
    provider = runtime().service.providers.current
    emit(
        {
            "ok": True,
            "provider": provider.name,
            "provider_key_id": provider.key_id,
            "settings": shown,
        }
    )


@click.group("keys")
def keys_group() -> None:
    """Create, list, rotate and revoke a tenant's keys."""


@keys_group.command("create")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--purpose", type=PURPOSES, default="all", show_default=True)
def keys_create(tenant_id: str, purpose: str) -> None:
    """Create the tenant's keys (existing ones are returned unchanged)."""
    created = runtime().service.create_keys(tenant_id, _purposes(purpose))
    emit([version_info(v) for v in created])


@keys_group.command("list")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def keys_list(tenant_id: str, as_json: bool) -> None:
    """Every version of the tenant's keys, with status."""
    versions = runtime().service.list_keys(tenant_id)
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
@click.option("--purpose", type=PURPOSES, default="all", show_default=True)
def keys_rotate(tenant_id: str, purpose: str) -> None:
    """Make a new active version now; the old one retires (signatures keep verifying)."""
    service = runtime().service
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
            for r in (service.rotate(tenant_id, p) for p in _purposes(purpose))
        ]
    )


@keys_group.command("revoke")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--kid", required=True)
def keys_revoke(tenant_id: str, kid: str) -> None:
    """Revoke a key version: its signatures stop verifying; an active one is replaced."""
    emit(version_info(runtime().service.revoke(tenant_id, kid)))


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
    rewrapper = Rewrapper(runtime().service, target, batch_size=batch_size, limit=limit)
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
