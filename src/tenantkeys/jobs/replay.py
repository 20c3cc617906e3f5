"""The one dead-letter replay, used by ``tenantkeys dlq replay`` and the ops API alike.

Each entry is re-enqueued under its original job id and task: the stored (dead-letter) result
of that id is forgotten first, so a caller waiting on the job id gets the replayed job's
result, not the old error. The store claims, publishes and deletes each entry atomically
(:meth:`DeadLetterStore.replay`): an entry is never gone without having been re-enqueued.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tenantkeys.errors import ErrorCode, InvalidRequest
from tenantkeys.jobs.deadletters import DeadLetterStore, ReplayReport, SealedJob


class Sender(Protocol):
    """What a replay needs of a producer (:class:`tenantkeys.client.SigningClient` is one)."""

    def forget(self, job_id: str) -> None: ...

    def send(self, task: str, kwargs: Mapping[str, Any], *, job_id: str | None = None) -> str: ...


@dataclass(frozen=True)
class Selection:
    """Which entries to replay: one id, every replayable one, or one tenant's."""

    entry_id: str | None = None
    everything: bool = False
    tenant_id: str | None = None

    def __post_init__(self) -> None:
        given = [self.entry_id is not None, self.everything, self.tenant_id is not None]
        if given.count(True) != 1:
            raise InvalidRequest(
                "give exactly one of an entry id, all, or a tenant",
                code=ErrorCode.INVALID_ARGUMENT,
            )


def replay(store: DeadLetterStore, selection: Selection, sender: Sender) -> ReplayReport:
    """Re-enqueue the selected entries; each leaves the store once sent, or is reported."""
    store.recover_stale()
    if selection.entry_id is not None:
        store.get(selection.entry_id)  # a clear TK-DEAD-LETTER-NOT-FOUND for a wrong id
        ids = [selection.entry_id]
    else:
        ids = [e.id for e in store.entries(tenant_id=selection.tenant_id) if e.replayable]

    def publish(job: SealedJob) -> None:
        if not job.entry.replayable:
            raise InvalidRequest(
                "this message could not be decoded or named no known task; purge it"
            )
        sender.forget(job.entry.job_id)  # the dead-letter result must not answer waiters
        sender.send(job.entry.task, job.kwargs, job_id=job.entry.job_id)

    return store.replay(ids, publish)
