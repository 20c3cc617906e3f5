"""``tenantkeys config check`` and ``tenantkeys keys create|list|rotate|revoke``."""

from __future__ import annotations

import click

from tenantkeys.cli.context import emit, runtime, settings, version_info
from tenantkeys.keys.model import Purpose, parse_purpose

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
    provider = runtime().service.providers.current
    emit({"ok": True, "provider": provider.name, "provider_key_id": provider.key_id,
          "settings": loaded.masked()})


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
    emit([
        {"tenant_id": r.tenant_id, "purpose": r.purpose, "rotated": r.rotated,
         "old_version": r.old_version, "new_version": r.new_version, "reason": r.reason}
        for r in (service.rotate(tenant_id, p) for p in _purposes(purpose))
    ])


@keys_group.command("revoke")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--kid", required=True)
def keys_revoke(tenant_id: str, kid: str) -> None:
    """Revoke a key version: its signatures stop verifying; an active one is replaced."""
    emit(version_info(runtime().service.revoke(tenant_id, kid)))
