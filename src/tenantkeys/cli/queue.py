"""``tenantkeys queue migrate-keys [--dry-run] [--json]``: jobs under old prefixed keys, moved."""

from __future__ import annotations

import click

from tenantkeys.cli.context import emit, settings
from tenantkeys.queue.migrate import KeyMigration, migrate_keys


@click.group("queue")
def queue_group() -> None:
    """The broker's queues and Celery's result keys."""


@queue_group.command("migrate-keys")
@click.option("--dry-run", is_flag=True, help="Count what would move; move nothing.")
@click.option(
    "--prefix",
    default=None,
    help="The old key prefix (default: TENANTKEYS_REDIS_PREFIX).",
)
@click.option("--json", "as_json", is_flag=True)
def migrate_keys_command(dry_run: bool, prefix: str | None, as_json: bool) -> None:
    """Move jobs and results left under the prefixed Celery keys of earlier versions.

    Safe to run while workers run, and more than once: each message moves atomically.
    """
    report = migrate_keys(settings(), dry_run=dry_run, prefix=prefix)
    if as_json:
        emit(report.as_dict())
        return
    click.echo(_describe(report))


def _describe(report: KeyMigration) -> str:
    verb = "would move" if report.dry_run else "moved"
    lines = [f"old prefix {report.prefix}:"]
    if report.broker_is_redis:
        for queue, count in report.queued.items():
            lines.append(f"  {queue}: {verb} {count} queued job(s)")
        lines.append(f"  unacked: {verb} {report.unacked} record(s)")
    else:
        lines.append("  broker is not Redis: no queue keys to move")
    if report.results_in_redis:
        lines.append(f"  results: {verb} {report.results}")
    else:
        lines.append("  result backend is not Redis: no result keys to move")
    lines.append(f"{verb} {report.total} in all")
    return "\n".join(lines)
