"""``tenantkeys dlq list | show ID | replay (ID | --all | --tenant T) | purge``."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from tenantkeys.cli.context import emit, settings
from tenantkeys.errors import ErrorCode, InvalidRequest
from tenantkeys.jobs.deadletters import DeadLetterStore
from tenantkeys.jobs.replay import Selection, replay
from tenantkeys.keys.runtime import redis_client


def _store() -> DeadLetterStore:
    config = settings()
    return DeadLetterStore.from_settings(config, redis_client(config))


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


@click.group("dlq")
def dlq_group() -> None:
    """Jobs that failed for good: review, replay or purge them."""


@dlq_group.command("list")
@click.option("--tenant", "tenant_id")
@click.option("--task")
@click.option("--code")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_command(
    tenant_id: str | None, task: str | None, code: str | None, limit: int, as_json: bool
) -> None:
    """Waiting dead letters, oldest first (payloads show as hash and size)."""
    entries = _store().entries(tenant_id=tenant_id, task=task, code=code, limit=limit)
    if as_json:
        emit([e.to_dict() for e in entries])
        return
    for e in entries:
        click.echo(
            f"{e.id}  {_when(e.last_failure_at)}  {e.task}  tenant={e.tenant_id}  "
            f"{e.code}  attempts={e.attempts}  worker={e.worker}"
        )
    click.echo(f"{len(entries)} dead letter(s)", err=True)


@dlq_group.command("show")
@click.argument("entry_id")
def show_command(entry_id: str) -> None:
    """One dead letter in full (arguments redacted)."""
    emit(_store().get(entry_id).to_dict())


@dlq_group.command("replay")
@click.argument("entry_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every replayable entry.")
@click.option("--tenant", "tenant_id", help="Replay the entries of one tenant.")
def replay_command(entry_id: str | None, replay_all: bool, tenant_id: str | None) -> None:
    """Re-enqueue entries under their original job ids; each leaves the store once sent."""
    selection = Selection(entry_id=entry_id, everything=replay_all, tenant_id=tenant_id)
    from tenantkeys.client import SigningClient

    with SigningClient.from_settings(settings()) as client:
        report = replay(_store(), selection, client)
    emit({"replayed": report.replayed, "failed": [list(f) for f in report.failed]})
    if report.failed:
        sys.exit(1)


@dlq_group.command("purge")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "purge_all", is_flag=True, help="Delete every waiting entry.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge_command(entry_ids: tuple[str, ...], purge_all: bool, yes: bool) -> None:
    """Delete dead letters for good (given ids, or --all)."""
    if bool(entry_ids) == purge_all:
        raise InvalidRequest("give entry ids or --all (not both)", code=ErrorCode.INVALID_ARGUMENT)
    store = _store()
    if purge_all and not yes:
        click.confirm(f"delete all {store.depth()} dead letters?", abort=True)
    removed = store.purge(None if purge_all else list(entry_ids))
    emit({"purged": removed})
