"""The dead-letter store on fakeredis: redaction, sealing, atomic replay, recovery, purge."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from tenantkeys import jobs
from tenantkeys.errors import (
    ConfigurationError,
    InvalidRequest,
    KmsPermissionError,
    TransientKmsError,
)
from tenantkeys.jobs.deadletters import (
    ArgumentSealer,
    DeadLetterStore,
    SealedJob,
    load_or_create_key,
)

pytestmark = pytest.mark.unit
PAYLOAD = b"PLAINTEXT-PAYLOAD-0123456789-must-never-be-stored"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def store(client: fakeredis.FakeRedis, clock: Clock) -> DeadLetterStore:
    return DeadLetterStore(
        client, "tktest", ArgumentSealer(os.urandom(32)), stale_seconds=60, clock=clock
    )


def add(
    store: DeadLetterStore,
    tenant: str = "acme",
    code_error: Exception | None = None,
    task: str = jobs.SIGN,
    job_id: str = "job-1",
) -> Any:
    kwargs = {"tenant_id": tenant, "payload": jobs.encode_payload(PAYLOAD)}
    error = code_error or TransientKmsError("KMS down", provider="aws", provider_code="Timeout")
    return store.add(
        task=task,
        job_id=job_id,
        kwargs=kwargs,
        arguments=jobs.redact(kwargs),
        error=error,
        attempts=6,
        worker="w1@host",
        queue=jobs.SIGN_QUEUE,
    )


def test_entry_keeps_everything_but_the_payload(
    store: DeadLetterStore, client: fakeredis.FakeRedis
) -> None:
    entry = add(store)
    shown = store.get(entry.id)
    assert shown.task == jobs.SIGN and shown.job_id == "job-1" and shown.tenant_id == "acme"
    assert shown.code == "TK-KMS-UNAVAILABLE" and shown.error_class == "TransientKmsError"
    assert shown.provider == "aws" and shown.provider_code == "Timeout"
    assert shown.attempts == 6 and shown.worker == "w1@host"
    assert shown.arguments["payload_size"] == len(PAYLOAD)
    assert len(shown.arguments["payload_sha256"]) == 64
    everything = b"".join(
        k + v
        for key in client.keys("*")
        if client.type(key) == b"hash"
        for k, v in client.hgetall(key).items()
    )
    assert PAYLOAD not in everything
    assert jobs.encode_payload(PAYLOAD).encode() not in everything
    assert base64.b64encode(PAYLOAD)[:20] not in everything


def test_first_failure_time_survives_retries(store: DeadLetterStore, clock: Clock) -> None:
    store.note_failure("job-1")
    clock.now += 30
    store.note_failure("job-1")
    clock.now += 30
    entry = add(store)
    assert entry.first_failure_at == 1_000_000.0
    assert entry.last_failure_at == 1_000_060.0


def test_sealed_arguments_are_bound_to_their_entry(
    store: DeadLetterStore, client: fakeredis.FakeRedis
) -> None:
    one, two = add(store, job_id="a"), add(store, job_id="b")
    key_one, key_two = f"tktest:dlq:entry:{one.id}", f"tktest:dlq:entry:{two.id}"
    client.hset(key_one, "sealed", client.hget(key_two, "sealed"))  # swap a sealed blob
    report = store.replay([one.id], lambda job: None)
    assert report.replayed == [] and "does not open" in report.failed[0][1]
    assert store.depth() == 2  # put back, not lost


def test_list_filters(store: DeadLetterStore) -> None:
    add(store, tenant="acme")
    add(
        store,
        tenant="globex",
        code_error=KmsPermissionError("denied"),
        task=jobs.CREATE_KEYS,
        job_id="job-2",
    )
    assert [e.tenant_id for e in store.entries(tenant_id="globex")] == ["globex"]
    assert [e.task for e in store.entries(task=jobs.SIGN)] == [jobs.SIGN]
    assert len(store.entries(code="TK-KMS-ACCESS-DENIED")) == 1
    assert len(store.entries(limit=1)) == 1


def test_replay_publishes_the_original_job_then_deletes(store: DeadLetterStore) -> None:
    entry = add(store)
    published: list[SealedJob] = []
    report = store.replay([entry.id], published.append)
    assert report.replayed == [entry.id]
    assert published[0].kwargs["payload"] == jobs.encode_payload(PAYLOAD)
    assert published[0].entry.job_id == "job-1"
    assert store.depth() == 0
    with pytest.raises(InvalidRequest):
        store.get(entry.id)


def test_failed_publish_keeps_the_entry(store: DeadLetterStore) -> None:
    entry = add(store)

    def broken(job: SealedJob) -> None:
        raise ConnectionError("broker down")

    report = store.replay([entry.id], broken)
    assert report.failed and store.depth() == 1
    assert store.get(entry.id).id == entry.id


def test_a_replayer_dying_mid_publish_is_recovered(store: DeadLetterStore, clock: Clock) -> None:
    entry = add(store)

    def dies(job: SealedJob) -> None:
        raise KeyboardInterrupt  # the process goes away between claim and delete

    with pytest.raises(KeyboardInterrupt):
        store.replay([entry.id], dies)
    assert store.depth() == 0  # claimed, but not gone: it is in "replaying"
    assert store.recover_stale() == 0  # not stale yet
    clock.now += 61
    assert store.recover_stale() == 1
    assert store.depth() == 1
    assert store.replay([entry.id], lambda job: None).replayed == [entry.id]


def test_an_entry_is_replayed_once_even_when_asked_twice(store: DeadLetterStore) -> None:
    entry = add(store)
    seen: list[str] = []

    def reentrant(job: SealedJob) -> None:
        seen.append(job.entry.id)
        inner = store.replay([entry.id], lambda j: seen.append("again"))
        assert inner.replayed == []

    store.replay([entry.id], reentrant)
    assert seen == [entry.id]


def test_a_job_dead_lettered_twice_has_one_entry(store: DeadLetterStore) -> None:
    first = add(store)
    second = add(store, code_error=KmsPermissionError("denied"))
    assert first.id == second.id and store.depth() == 1
    assert store.get(first.id).code == "TK-KMS-ACCESS-DENIED"


def test_purge_and_age(store: DeadLetterStore, clock: Clock) -> None:
    assert store.oldest_age() is None
    first = add(store)
    clock.now += 10
    add(store, job_id="job-2")
    clock.now += 5
    assert store.oldest_age() == 15.0
    assert store.purge([first.id]) == 1
    assert store.depth() == 1
    assert store.purge() == 1
    assert store.depth() == 0


def test_dead_letter_key_file_is_created_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dl.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and load_or_create_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    with pytest.raises(ConfigurationError):
        load_or_create_key(path)
