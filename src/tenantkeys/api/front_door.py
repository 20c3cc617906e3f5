"""The HTTP front door's work, without HTTP: check a request, record its owner, enqueue it.

:func:`parse_request` checks a body with the job contract a worker uses
(:func:`tenantkeys.jobs.contract.parse_arguments`, :func:`tenantkeys.jobs.decode_payload`), so
both paths refuse the same input with the same codes; here the whole request is refused (4xx)
before anything is queued.

:class:`JobOwners` keeps, per job id, who submitted it and the SHA-256 of what they submitted,
under ``{redis_prefix}:frontdoor:job:{id}`` for as long as results are kept. Claiming an id is
a ``SET NX``: of two concurrent submits of one id, one enqueues; the other is answered with the
same job (same producer and body) or ``TK-JOB-ID-CONFLICT``.

Job ids are shared with the queue producers: a new id is first claimed in the workers' registry
(:class:`tenantkeys.jobs.scopes.JobOwners`) under the name the workers know the front door's
messages by (:func:`publisher_name`). An id a queue producer used first is refused here
(``TK-JOB-ID-CONFLICT``), so its result is never shown to an HTTP caller; a queue producer's
later job under an id the front door holds is refused by the worker.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import redis
from cryptography import x509

from tenantkeys import jobs
from tenantkeys.api.job_models import JOB_ID_PATTERN
from tenantkeys.client import SigningClient
from tenantkeys.config import Settings
from tenantkeys.errors import ErrorCode, InvalidRequest, TransientError
from tenantkeys.jobs.scopes import UNLISTED, Producer, ProducerScopes, count_job_id_conflict
from tenantkeys.jobs.scopes import JobOwners as WorkerJobOwners
from tenantkeys.keys.model import validate_tenant_id
from tenantkeys.queue.producer import JobState

_JOB_ID = re.compile(JOB_ID_PATTERN)
#: The front door's jobs, by the path that takes them.
TASKS: Final = {"sign": jobs.SIGN, "sign-batch": jobs.SIGN_BATCH}
#: Tokens longer than this are refused unhashed (a cheap guard against huge headers).
MAX_TOKEN_LENGTH = 512


class RequestShapeError(InvalidRequest):
    """The body is not the job's shape (wrong types, unknown or missing fields): HTTP 422."""


@dataclass(frozen=True)
class JobRequest:
    """A checked request: the job to publish, the tenants it names, and its digest."""

    job_id: str
    task: str
    kwargs: dict[str, Any]
    tenants: frozenset[str]

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical job (task and arguments): what a resubmit must match."""
        canonical = json.dumps(
            {"task": self.task, "kwargs": self.kwargs}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def parse_request(task: str, body: bytes, *, max_payload_bytes: int) -> JobRequest:
    """The job a request body asks for; the coded error of the first thing wrong with it."""
    try:
        document = json.loads(body)
    except RecursionError:  # nesting deeper than the parser goes
        raise RequestShapeError("the request body nests too deeply") from None
    except ValueError:  # not JSON, or not UTF-8
        raise RequestShapeError("the request body is not JSON (UTF-8)") from None
    if not isinstance(document, dict):
        raise RequestShapeError("the request body must be a JSON object")
    job_id = document.pop("job_id", None)
    if job_id is None:
        job_id = str(uuid.uuid4())
    elif not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise InvalidRequest(
            "job_id must be 1-128 characters of A-Z a-z 0-9 . _ : -, starting with a letter "
            "or digit"
        )
    compact = task == jobs.SIGN_BATCH and jobs.is_compact_batch(document)
    field = jobs.COMPACT_BATCH_FIELD if compact else "items"
    items = document.get(field) if task == jobs.SIGN_BATCH else None
    if isinstance(items, list) and not 1 <= len(items) <= jobs.MAX_BATCH_ITEMS:
        # Checked before the items are: a huge batch costs nothing to refuse. The code and
        # the words are the runner's, which refuses the same batch on the queue.
        raise RequestShapeError(
            f"a sign_batch job carries 1 to {jobs.MAX_BATCH_ITEMS} items, not {len(items)}: "
            "split bigger batches into several jobs"
        )
    try:
        kwargs = jobs.parse_arguments(task, document)
    except InvalidRequest as exc:
        raise RequestShapeError(exc.message, code=exc.code) from None
    if compact:
        # The compact form's JSON twin: base64 payloads, one tenant, one array of JWS back.
        singles = [{"tenant_id": kwargs["tenant_id"], "payload": p} for p in kwargs[field]]
    else:
        singles = kwargs["items"] if task == jobs.SIGN_BATCH else [kwargs]
    for index, item in enumerate(singles):
        where = f"{field}[{index}]: " if task == jobs.SIGN_BATCH else ""
        _check_item(item, where, max_payload_bytes)
    return JobRequest(
        job_id=job_id,
        task=task,
        kwargs=_canonical(task, kwargs),
        tenants=frozenset(item["tenant_id"] for item in singles),
    )


def _check_item(item: Any, where: str, max_payload_bytes: int) -> None:
    """What a worker refuses before signing, refused here: tenant id, encoding, size."""
    try:
        validate_tenant_id(item["tenant_id"])
        payload = jobs.decode_payload(item["payload"])
    except InvalidRequest as exc:
        raise InvalidRequest(where + exc.message, code=exc.code) from None
    if len(payload) > max_payload_bytes:
        raise InvalidRequest(
            f"{where}payload is {len(payload)} bytes; the limit is {max_payload_bytes} "
            "(TENANTKEYS_MAX_PAYLOAD_BYTES)",
            code=ErrorCode.PAYLOAD_TOO_LARGE,
        )


def _canonical(task: str, kwargs: Any) -> dict[str, Any]:
    """The arguments as published: ``canonical_json`` only when true (false is the default),
    so two bodies that mean the same job have the same digest."""

    def one(item: Any) -> dict[str, Any]:
        shown = {"tenant_id": item["tenant_id"], "payload": item["payload"]}
        if item.get("canonical_json"):
            shown["canonical_json"] = True
        return shown

    if task == jobs.SIGN_BATCH and jobs.is_compact_batch(kwargs):
        compact = {"tenant_id": kwargs["tenant_id"], "payloads": list(kwargs["payloads"])}
        if kwargs.get("canonical_json"):
            compact["canonical_json"] = True
        return compact
    if task == jobs.SIGN_BATCH:
        return {"items": [one(item) for item in kwargs["items"]]}
    return one(kwargs)


class Claim(Enum):
    """What claiming a job id found."""

    NEW = "new"  # ours now: enqueue it
    SAME = "same"  # this producer sent this very job before: answer with it
    CONFLICT = "conflict"  # another body, or another producer's id


#: Deletes the owner record only if it is still the one we wrote (a publish that failed).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class JobOwners:
    """Who submitted each front-door job id, and the digest of what they submitted."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_seconds: int) -> None:
        self._redis = client
        self._prefix = f"{prefix}:frontdoor:job:"
        self._ttl = ttl_seconds
        self._release = client.register_script(_RELEASE)
        #: The workers' registry of job ids, shared with every queue producer.
        self._shared = WorkerJobOwners(client, prefix, ttl_seconds)

    def _key(self, job_id: str) -> str:
        return self._prefix + job_id

    @staticmethod
    def _record(producer: str, digest: str) -> str:
        return json.dumps({"producer": producer, "sha256": digest}, sort_keys=True)

    def claim(self, job_id: str, producer: str, digest: str, *, publisher: str) -> Claim:
        """Claim ``job_id`` for ``producer`` with a ``SET NX`` (atomic against a twin).

        First in the workers' registry under ``publisher``: an id a queue producer used is a
        conflict, and nothing of ours is written. Claimed there before here, so a failure in
        between leaves no record of ours that would answer a resubmit with a job never sent.
        """
        record = self._record(producer, digest)
        with _redis_down():
            if self._shared.claim(job_id, publisher) is not None:
                return Claim.CONFLICT
            if self._redis.set(self._key(job_id), record, nx=True, ex=self._ttl):
                return Claim.NEW
            found = self._redis.get(self._key(job_id))
        if found is None:  # expired between the two calls: it was never ours to answer with
            return self.claim(job_id, producer, digest, publisher=publisher)
        return Claim.SAME if _text(found) == record else Claim.CONFLICT

    def release(self, job_id: str, producer: str, digest: str) -> None:
        """Forget a claim whose publish failed, so the same request can be sent again."""
        with _redis_down():
            self._release(keys=[self._key(job_id)], args=[self._record(producer, digest)])

    def owner(self, job_id: str) -> str | None:
        """The name of the producer that submitted ``job_id``, or None (unknown, expired)."""
        with _redis_down():
            found = self._redis.get(self._key(job_id))
        if found is None:
            return None
        owner = json.loads(_text(found)).get("producer")
        return owner if isinstance(owner, str) else None


@contextmanager
def _redis_down() -> Iterator[None]:
    """Redis failures as ``TK-CACHE-UNAVAILABLE`` (HTTP 503: try again later)."""
    try:
        yield
    except redis.RedisError as exc:
        raise TransientError(
            f"Redis cannot be reached ({type(exc).__name__})", code=ErrorCode.CACHE_UNAVAILABLE
        ) from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def publisher_name(settings: Settings, producers: ProducerScopes) -> str:
    """The producer name the workers know this API's task messages by.

    The scopes entry of the certificate the API signs them with; ``unlisted`` when no entry
    names it: the workers' own certificate (the workers record its jobs under no name), or
    message signing off (the workers check no scopes). No producer may take that name, so a
    queue producer's job under an id claimed with it is refused.
    """
    files = settings.message_signing_files()
    if files is None:
        return UNLISTED
    cert = x509.load_pem_x509_certificate(files[1].read_bytes())
    found = producers.by_subject(cert.subject.rfc4514_string())
    return UNLISTED if found is None else found.name


class FrontDoor:
    """The producers' scopes, the job owners and the producer that enqueues."""

    def __init__(
        self, settings: Settings, scopes: ProducerScopes, owners: JobOwners, sender: SigningClient
    ) -> None:
        self.settings = settings
        self.scopes = scopes
        self.owners = owners
        self.sender = sender
        #: Whose name the front door's job ids are claimed under in the workers' registry.
        self.publisher = publisher_name(settings, scopes)

    def producer_of(self, token: str | None) -> Producer | None:
        """The producer whose bearer token this is, or None."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        return self.scopes.by_token(token)

    def parse(self, task: str, body: bytes) -> JobRequest:
        return parse_request(task, body, max_payload_bytes=self.settings.max_payload_bytes)

    def check_scope(self, producer: Producer, request: JobRequest) -> None:
        """``TK-SCOPE-DENIED`` (counted, path ``http``) for a tenant outside the scope."""
        self.scopes.check(producer, sorted(request.tenants), path="http")

    def submit(self, producer: Producer, request: JobRequest) -> bool:
        """Enqueue the job once per id; False when this producer had sent it already.

        ``TK-JOB-ID-CONFLICT`` for an id used with another body or by another producer (over
        HTTP or on the queue).
        """
        digest = request.digest
        claim = self.owners.claim(request.job_id, producer.name, digest, publisher=self.publisher)
        if claim is Claim.SAME:
            return False
        if claim is Claim.CONFLICT:
            count_job_id_conflict(producer.name, "http")
            raise InvalidRequest(
                f"job id {request.job_id!r} is already used by another job (another body, or "
                "another producer's, over HTTP or on the queue); give each job its own id",
                code=ErrorCode.JOB_ID_CONFLICT,
            )
        try:
            self.sender.send(request.task, request.kwargs, job_id=request.job_id)
        except BaseException:
            self.owners.release(request.job_id, producer.name, digest)
            raise
        return True

    def owns(self, producer: Producer, job_id: str) -> bool:
        """Whether ``producer`` submitted ``job_id`` (and its record has not expired)."""
        return bool(_JOB_ID.fullmatch(job_id)) and self.owners.owner(job_id) == producer.name

    def state(self, job_id: str) -> JobState:
        return self.sender.producer.state(job_id)
