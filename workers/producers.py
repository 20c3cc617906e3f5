"""Producer scopes on the queue path: who signed a task message, and may it ask for that.

With ``TENANTKEYS_PRODUCER_SCOPES_FILE`` set, the worker's parent checks every task message in
its consumer (``workers/consumer.py``), after Celery's ``auth`` serializer verified the body
and before any task strategy, pool process or batch sees it. Nothing a producer writes into
the message names the producer: the identity is the subject of the certificate whose key
signed the body (:func:`tenantkeys.queue.message_signing.signer_subject`).

* The workers' own certificate (``TENANTKEYS_MESSAGE_SIGNING_CERT_FILE``) signs retries, the
  rotation sweep and dead-letter replays: jobs already checked, so it is trusted for all.
* Any other signer must be a producer of the scopes file. ``sign``, ``sign_batch``,
  ``create_keys``, ``rotate_key`` and ``revoke_key`` are checked tenant by tenant (a
  ``sign_batch`` with any item outside the scope is refused whole); every other task
  (``rotation_sweep``, Celery's built-in ``celery.*`` tasks) and any message carrying
  callbacks, errbacks, a chain or a chord (work the *worker* would publish, under its own
  certificate) need a ``"*"`` producer.
* A job id belongs to the first producer that used it, for ``result_expires``: another
  producer's job under that id is refused without touching the first one's result.

Protocol-1 task messages (no ``task`` header) are refused while scopes are on: the checks read
the task name where Celery's protocol 2 puts it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from cryptography import x509

from tenantkeys import jobs
from tenantkeys.config import Settings
from tenantkeys.errors import (
    ConfigurationError,
    ErrorCode,
    InvalidRequest,
    JobIdConflict,
    ScopeDenied,
    TenantKeysError,
)
from tenantkeys.jobs.scopes import (
    UNLISTED,
    JobOwners,
    Producer,
    ProducerScopes,
    count_job_id_conflict,
    count_refusal,
    normalized_subject,
)
from tenantkeys.keys.runtime import redis_client
from tenantkeys.queue.message_signing import SIGNED_CONTENT_TYPE, signer_subject

log = logging.getLogger(__name__)

#: Jobs whose tenants are ``tenant_id`` (``sign_batch``: each item's); others need ``"*"``.
_ONE_TENANT = frozenset({jobs.SIGN, jobs.CREATE_KEYS, jobs.ROTATE_KEY, jobs.REVOKE_KEY})
#: Fields of Celery's ``embed`` (body[2]) that make the worker publish more work.
_MORE_WORK = ("callbacks", "errbacks", "chain", "chord")


@dataclass(frozen=True)
class Refusal:
    """Why a task message is not run: the error, and the producer it is counted under."""

    error: TenantKeysError
    producer: str

    @property
    def keeps_result(self) -> bool:
        """A job id conflict stores nothing: the id's result is the first producer's."""
        return self.error.code == ErrorCode.JOB_ID_CONFLICT


class QueueScopes:
    """The checks of one worker: its scopes file, its own certificate, the job id owners."""

    def __init__(self, scopes: ProducerScopes, own_subject: str, owners: JobOwners) -> None:
        self.scopes = scopes
        self._own = normalized_subject(own_subject)
        self.owners = owners

    @classmethod
    def from_settings(cls, settings: Settings) -> QueueScopes | None:
        """The worker's checks; None without a scopes file. TK-CONFIG-INVALID when the
        scopes file is bad, or set without message signing (no producer would be known)."""
        scopes = ProducerScopes.from_settings(settings)
        if scopes is None:
            return None
        files = settings.message_signing_files()
        if files is None:
            raise ConfigurationError(
                "TENANTKEYS_PRODUCER_SCOPES_FILE is set but TENANTKEYS_MESSAGE_SIGNING is off: "
                "without signed task messages the workers cannot tell producers apart, so "
                "any broker client could sign for every tenant. Turn message signing on "
                "(docs/reliability.md#producer-authentication) or unset the scopes file",
                code=ErrorCode.CONFIG_INVALID,
            )
        cert = x509.load_pem_x509_certificate(files[1].read_bytes())
        owners = JobOwners(
            redis_client(settings), settings.redis_prefix, settings.result_expires_seconds
        )
        return cls(scopes, cert.subject.rfc4514_string(), owners)

    def refusal(self, message: Any) -> Refusal | None:
        """Why ``message`` must not run; None to let it through (to Celery's own checks)."""
        headers = message.headers if isinstance(message.headers, Mapping) else {}
        task = headers.get("task")
        if not isinstance(task, str):
            error = InvalidRequest(
                "task messages must use Celery's message protocol 2 (a task header) while "
                "producer scopes are on",
                code=ErrorCode.INVALID_ARGUMENT,
            )
            return Refusal(error, UNLISTED)
        try:
            body = message.decode()  # memoized by kombu: decoded (and verified) once
        except Exception:  # undecodable or unsigned: Celery's decode-error path records it
            return None
        subject = signer_subject(message.body)
        if subject is None:
            if message.content_type != SIGNED_CONTENT_TYPE:
                return None  # not signed: Celery refuses it (TK-MESSAGE-UNSIGNED)
            error = ScopeDenied("the certificate that signed this job is not in the store")
            return Refusal(error, UNLISTED)
        if normalized_subject(subject) == self._own:
            return None  # the workers' own: a retry, the sweep or a replay of a checked job
        producer = self.scopes.by_subject(subject)
        if producer is None:
            error = ScopeDenied(
                f"the certificate {subject!r} that signed this job is trusted but names no "
                "producer of TENANTKEYS_PRODUCER_SCOPES_FILE: it may sign for no tenant"
            )
            return Refusal(error, UNLISTED)
        job_id = headers.get("id")
        try:
            self._check(producer, task, body)
        except ScopeDenied as denied:
            conflict = self._conflict(job_id, producer, claim=False)
            return conflict or Refusal(denied, producer.name)
        return self._conflict(job_id, producer, claim=True)

    def _check(self, producer: Producer, task: str, body: object) -> None:
        if producer.tenants is None:
            return  # "*": every tenant, every task
        _args, kwargs, embed = _parts(body)
        more_work = [name for name in _MORE_WORK if embed.get(name)]
        if more_work:
            raise ScopeDenied(
                f"producer {producer.name!r} may not attach {', '.join(more_work)} to a job: "
                "the worker would publish that work under its own certificate"
            )
        if task in _ONE_TENANT:
            tenants = _strings([kwargs.get("tenant_id")])
        elif task == jobs.SIGN_BATCH:
            # Both forms' tenants: the compact one's, and each item's (a job naming both is
            # refused by the contract, but only after this check).
            items = kwargs.get("items")
            items = items if isinstance(items, list) else []
            named = [kwargs.get("tenant_id")]
            named += [i.get("tenant_id") for i in items if isinstance(i, Mapping)]
            tenants = _strings(named)
        else:
            raise ScopeDenied(
                f"producer {producer.name!r} may not send {task[:100]!r} jobs: only a producer "
                'whose scope is "*" may'
            )
        # Tenant ids that are not strings are no tenant: the job contract rejects them.
        self.scopes.check(producer, tenants)

    def _conflict(self, job_id: object, producer: Producer, *, claim: bool) -> Refusal | None:
        if not isinstance(job_id, str):
            return None  # no id: nothing to overwrite; Celery refuses the message
        try:
            if claim:
                other = self.owners.claim(job_id, producer.name)
            else:
                other = self.owners.owner_other_than(job_id, producer.name)
        except redis.RedisError as exc:
            # The tenant scope is checked in memory and holds; only the replay guard waits
            # for Redis (which also holds the results and dead letters it would protect).
            log.warning("job id owner of %s not checked (%s)", job_id[:200], type(exc).__name__)
            return None
        if other is None:
            return None
        error = JobIdConflict(
            f"job id already used by producer {other!r}; producer {producer.name!r} must "
            "give its jobs ids of their own"
        )
        return Refusal(error, producer.name)

    @staticmethod
    def count(refusal: Refusal) -> None:
        """Count a refusal the consumer acted on, under its producer's name."""
        if refusal.error.code == ErrorCode.JOB_ID_CONFLICT:
            count_job_id_conflict(refusal.producer, "queue")
        elif refusal.error.code == ErrorCode.SCOPE_DENIED:
            count_refusal(refusal.producer, "queue")


def _parts(body: object) -> tuple[Sequence[Any], Mapping[str, Any], Mapping[str, Any]]:
    """``[args, kwargs, embed]`` of a protocol-2 body (its shape is checked before)."""
    if isinstance(body, list | tuple) and len(body) == 3:
        args, kwargs, embed = body
        if isinstance(kwargs, Mapping) and isinstance(embed, Mapping):
            return args, kwargs, embed
    return (), {}, {}


def _strings(values: Any) -> list[str]:
    return [value for value in values if isinstance(value, str)]
