"""``tenantkeys config check``: the effective settings as a table, secrets masked, with warnings.

Creates nothing: the provider is built only when it can be without writing (a missing local
master key is reported, not made), and the key store is only looked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from tenantkeys.cli.context import emit, local_master_key, settings, where_from
from tenantkeys.config import Settings, masked_url, masked_value
from tenantkeys.config.locations import sqlite_path
from tenantkeys.keys.kms import ProviderSet, check_providers

#: Above this an L1 key outlives a missed revocation by more than a quarter hour while Redis
#: is down (availability policy); the default is 300 s.
LONG_L1_TTL_SECONDS = 900


@dataclass(frozen=True)
class Report:
    provider: str
    provider_key_id: str | None
    data_dir: str
    key_store: str
    settings: dict[str, Any]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": True, **self.__dict__}


def warnings_for(config: Settings) -> list[str]:
    """Choices that work but are risky; each names the variable and why."""
    found = []
    if config.kms_provider == "local":
        found.append(
            "TENANTKEYS_KMS_PROVIDER=local: keys are wrapped by a master key file on this disk "
            "(development only; refused in production)"
        )
    if config.admin_token_sha256 is None:
        found.append(
            "TENANTKEYS_ADMIN_TOKEN_SHA256 is unset: the ops API's admin routes are closed"
        )
    if config.cache_ttl_seconds > LONG_L1_TTL_SECONDS:
        found.append(
            f"TENANTKEYS_CACHE_TTL_SECONDS={config.cache_ttl_seconds} is long (over "
            f"{LONG_L1_TTL_SECONDS} s): a revoked key may sign that long in a process that "
            "missed the invalidation while Redis was down"
        )
    return found


def _provider(config: Settings) -> tuple[str, str | None, str | None]:
    """Name, key id (None when not built) and a warning, building the provider if harmless."""
    check_providers(config)  # every configured provider's settings, validated
    master = local_master_key(config) if config.kms_provider == "local" else None
    if master is not None and not master.exists():
        return "local", None, f"no local master key at {master} yet (`keys create` makes one)"
    providers = ProviderSet.from_settings(config)
    try:
        current = providers.current
        return current.name, current.key_id, None
    finally:
        providers.close()


def build_report(config: Settings) -> Report:
    providers = {
        variable: masked_value(value)
        for checked in check_providers(config).values()
        for variable, value in checked.by_variable().items()
    }
    shown = {k: v for k, v in config.masked().items() if k not in providers} | providers
    name, key_id, note = _provider(config)
    warnings = warnings_for(config) + ([note] if note else [])
    store_file = sqlite_path(config.database_url)
    if store_file is None:
        store = masked_url(config.database_url)
    elif store_file.exists():
        store = str(store_file.resolve())
    else:
        store = f"{store_file.resolve()} (not created yet)"
        warnings.append(f"no key store at {store_file.resolve()} yet ({where_from(config)})")
    return Report(name, key_id, where_from(config), store, shown, warnings)


@click.group("config")
def config_group() -> None:
    """Settings."""


@config_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
def config_check(as_json: bool) -> None:
    """Validate settings and the provider; print the effective settings (secrets masked)."""
    report = build_report(settings())
    if as_json:
        emit(report.to_dict())
        return
    key = f", key {report.provider_key_id}" if report.provider_key_id else ""
    click.echo(f"settings OK: provider {report.provider}{key}")
    click.echo(f"key store: {report.key_store}")
    click.echo(f"{report.data_dir}")
    click.echo("")
    width = max(len(name) for name in report.settings)
    click.echo(f"{'VARIABLE':<{width}}  VALUE")
    for name, value in report.settings.items():
        click.echo(f"{name:<{width}}  {_cell(value)}")
    if report.warnings:
        click.echo("")
        for warning in report.warnings:
            click.echo(f"warning: {warning}")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)
