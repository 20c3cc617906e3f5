"""Producer authentication settings and the ``auth`` serializer they set up (no broker)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.serialization import dumps, loads, registry

from tenantkeys.config import load_settings
from tenantkeys.errors import ConfigurationError, ErrorCode
from tenantkeys.queue.message_signing import (
    SIGNED,
    SIGNED_BINARY,
    SIGNED_CONTENT_TYPE,
    SignedJobs,
    setup_message_signing,
)
from tests.helpers import self_signed_identity

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("TENANTKEYS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


@pytest.fixture
def kombu_registry() -> Iterator[None]:
    """setup_security changes kombu's process-wide registry: put it back afterwards."""
    saved = (
        registry._default_content_type,
        registry._default_content_encoding,
        registry._default_encode,
        set(registry._disabled_content_types),
    )
    yield
    registry.unregister(SIGNED)
    (
        registry._default_content_type,
        registry._default_content_encoding,
        registry._default_encode,
        disabled,
    ) = saved
    registry._disabled_content_types = disabled


def identity(directory: Path, name: str) -> tuple[Path, Path]:
    """A private key and a self-signed certificate (PEM files) named ``name``."""
    return self_signed_identity(directory, name, days=1)


def signing_env(monkeypatch: pytest.MonkeyPatch, key: Path, cert: Path, store: Path) -> None:
    monkeypatch.setenv("TENANTKEYS_MESSAGE_SIGNING", "true")
    monkeypatch.setenv("TENANTKEYS_MESSAGE_SIGNING_KEY_FILE", str(key))
    monkeypatch.setenv("TENANTKEYS_MESSAGE_SIGNING_CERT_FILE", str(cert))
    monkeypatch.setenv("TENANTKEYS_MESSAGE_SIGNING_CERT_STORE", str(store))


def test_off_by_default() -> None:
    settings = load_settings()
    assert settings.message_signing is False
    assert settings.message_signing_files() is None


def test_on_without_files_names_every_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANTKEYS_MESSAGE_SIGNING", "true")
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert err.value.code == ErrorCode.CONFIG_MISSING_SETTING
    for suffix in ("KEY_FILE", "CERT_FILE", "CERT_STORE"):
        assert f"TENANTKEYS_MESSAGE_SIGNING_{suffix}" in err.value.message


def test_paths_that_do_not_exist_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key, _ = identity(tmp_path, "worker")
    signing_env(monkeypatch, key, tmp_path / "absent.pem", tmp_path / "no-store")
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert err.value.code == ErrorCode.CONFIG_MISSING_SETTING
    assert "TENANTKEYS_MESSAGE_SIGNING_KEY_FILE" not in err.value.message
    assert "TENANTKEYS_MESSAGE_SIGNING_CERT_FILE" in err.value.message
    assert "TENANTKEYS_MESSAGE_SIGNING_CERT_STORE" in err.value.message


def test_a_store_without_certificates_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key, cert = identity(tmp_path, "worker")
    empty = tmp_path / "store"
    empty.mkdir()
    signing_env(monkeypatch, key, cert, empty)
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert err.value.code == ErrorCode.CONFIG_INVALID
    assert "TENANTKEYS_MESSAGE_SIGNING_CERT_STORE" in err.value.message


@pytest.mark.usefixtures("kombu_registry")
def test_signed_bodies_decode_only_from_trusted_certificates(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = tmp_path / "trusted"
    store.mkdir()
    key, cert = identity(store, "worker")
    signing_env(monkeypatch, key, cert, store)
    settings = load_settings()
    app = Celery("test-signing", set_as_current=False)
    setup_message_signing(app, settings)
    assert app.conf.task_serializer == SIGNED
    assert app.conf.accept_content == [SIGNED]
    assert app.conf.result_serializer == "json"
    assert app.conf.result_accept_content == ["json"]

    body = [[], {"tenant_id": "acme"}, {}]
    content_type, encoding, signed = dumps(body, serializer=SIGNED)
    assert content_type == SIGNED_CONTENT_TYPE
    assert loads(signed, content_type, encoding, accept=[SIGNED]) == body
    with pytest.raises(DecodeError):  # tampered after signing
        loads(signed[:-4] + "AAA=", content_type, encoding, accept=[SIGNED])
    with pytest.raises(ContentDisallowed):  # unsigned JSON
        loads("[[], {}, {}]", "application/json", "utf-8", accept=[SIGNED])


@pytest.mark.usefixtures("kombu_registry")
def test_a_certificate_added_later_is_trusted_without_restart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store, elsewhere = tmp_path / "trusted", tmp_path / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    key, cert = identity(store, "worker")
    producer_key, producer_cert = identity(elsewhere, "producer")
    signing_env(monkeypatch, producer_key, producer_cert, store)
    producer = Celery("producer", set_as_current=False)
    setup_message_signing(producer, load_settings())
    content_type, encoding, signed = dumps({"job": 1}, serializer=SIGNED)

    signing_env(monkeypatch, key, cert, store)
    setup_message_signing(Celery("worker", set_as_current=False), load_settings())
    with pytest.raises(DecodeError):  # the producer's certificate is not trusted yet
        loads(signed, content_type, encoding, accept=[SIGNED])
    (store / "producer.pem").write_bytes(producer_cert.read_bytes())
    assert loads(signed, content_type, encoding, accept=[SIGNED]) == {"job": 1}


@pytest.mark.usefixtures("kombu_registry")
def test_signed_msgpack_bodies_round_trip_and_signed_pickle_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from celery.security.certificate import Certificate
    from celery.security.key import PrivateKey
    from celery.security.serialization import DEFAULT_SEPARATOR, SecureSerializer

    store = tmp_path / "trusted"
    store.mkdir()
    key, cert = identity(store, "producer")
    signing_env(monkeypatch, key, cert, store)
    setup_message_signing(Celery("producer", set_as_current=False), load_settings())
    # Raw payloads may hold the envelope's own separator: the body is its last field.
    payload = b"\x00\x01" * 600 + DEFAULT_SEPARATOR
    body = [[], {"tenant_id": "acme", "payloads": [payload, b"x"]}, {}]
    content_type, encoding, signed = dumps(body, serializer=SIGNED_BINARY)
    assert content_type == SIGNED_CONTENT_TYPE
    assert loads(signed, content_type, encoding, accept=[SIGNED]) == body

    # A trusted signer naming pickle inside its envelope: refused before anything is loaded.
    pickled = SecureSerializer(
        PrivateKey(key.read_text()), Certificate(cert.read_text()), None, "sha256", "pickle"
    ).serialize(body)
    with pytest.raises(DecodeError, match="only JSON and msgpack"):
        loads(pickled, content_type, encoding, accept=[SIGNED])


def test_the_celery_members_signed_jobs_builds_on_are_there() -> None:
    """SignedJobs uses SecureSerializer's _unpack, _cert_store and _digest (CONVENTIONS 12)."""
    from celery.security.serialization import SecureSerializer

    serializer = SignedJobs(None, None, {}, "sha256", "json")
    assert callable(SecureSerializer._unpack)
    assert serializer._cert_store == {}
    assert serializer._digest is not None
    fields = serializer._unpack(
        SecureSerializer._pack(serializer, b"body", "ct", "enc", b"s", b"sig")
    )
    assert fields == {
        "signer": b"s",
        "signature": b"sig",
        "content_type": "ct",
        "content_encoding": "enc",
        "body": b"body",
    }
