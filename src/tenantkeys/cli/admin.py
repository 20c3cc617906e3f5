"""``tenantkeys admin validate | status``: the ops API's admin checks, run in this process.

No HTTP and no token: whoever runs the CLI already holds the settings and the credentials.
Both print one JSON object. ``validate`` exits 1 when a step failed; ``status`` exits 0 when it
could print a report, even if some parts of it are unknown (listed under ``errors``).
"""

from __future__ import annotations

import sys

import click

from tenantkeys.cli.context import emit, runtime

EXIT_STEP_FAILED = 1


@click.group("admin")
def admin_group() -> None:
    """Validate the KMS set-up and show the service's state."""


@admin_group.command("validate")
def validate_command() -> None:
    """Generate, encrypt, decrypt, describe and a wrong-context decrypt that must fail.

    Calls the KMS directly, not through the circuit breaker, so an open breaker does not hide
    what is wrong. A failed step carries its error code and a remedy.
    """
    from tenantkeys.admin.checks import validate_configured

    report = validate_configured(runtime().service.providers.current)
    emit(report.to_dict())
    if not report.ok:
        click.echo(f"failed steps: {', '.join(report.failed)}", err=True)
        sys.exit(EXIT_STEP_FAILED)


@admin_group.command("status")
def status_command() -> None:
    """Provider, the fleet's cache hit rate and KMS calls, last sweep, rotations, dead
    letters, breaker."""
    from tenantkeys.admin.status import collect_status

    emit(collect_status(runtime()))
