"""What every CLI command shares: settings loaded once, the runtime built on demand."""

from __future__ import annotations

import json
from typing import Any

import click

from tenantkeys.config import Settings, load_settings
from tenantkeys.keys.model import KeyVersion
from tenantkeys.keys.runtime import Runtime, build_runtime


def settings() -> Settings:
    ctx = click.get_current_context()
    obj = ctx.find_root().ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load_settings()
    loaded: Settings = obj["settings"]
    return loaded


def runtime() -> Runtime:
    ctx = click.get_current_context()
    obj = ctx.find_root().ensure_object(dict)
    if "runtime" not in obj:
        built = build_runtime(settings())
        obj["runtime"] = built
        ctx.find_root().call_on_close(built.close)
    found: Runtime = obj["runtime"]
    return found


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=None, sort_keys=False))


def version_info(version: KeyVersion) -> dict[str, Any]:
    """The public facts of a key version (never wrapped or plaintext secrets)."""
    return version.public_info()
