"""The ``local`` provider: AES-256-GCM under a master key kept in a 0600 file.

A real provider for development and tests, never for production: it refuses to start when
the service runs in production mode. The context is bound as AES-GCM associated data, so a
wrapped key opened under another tenant's context fails exactly as it would on a cloud KMS.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tenantkeys.errors import ConfigurationError, ErrorCode, IntegrityError, TenantKeysError
from tenantkeys.providers.base import (
    CommonSettings,
    Context,
    KeyDescription,
    KmsProvider,
    ProviderSettings,
    canonical_context,
)

_MAGIC = b"TKL1"
_NONCE_BYTES = 12
_KEY_BYTES = 32


class LocalSettings(ProviderSettings):
    """``TENANTKEYS_LOCAL_*``: where the master key lives; nothing is required."""

    provider: ClassVar[str] = "local"
    setup_doc: ClassVar[str] = "docs/setup/KMS_QUICKSTART.md"

    #: Created 0600 on first use, so the embedded default needs no setting at all.
    master_key_file: Path = Path("./.tenantkeys/master.key")


class LocalProvider(KmsProvider):
    """Wraps data keys with a master key read from (or created in) ``master_key_file``."""

    name = "local"
    settings_model = LocalSettings

    @classmethod
    def from_settings(cls, values: Mapping[str, object], common: CommonSettings) -> Self:
        settings = LocalSettings.parse(values)
        return cls(settings.master_key_file, production=common.production)

    def __init__(self, master_key_file: Path | str, *, production: bool = False) -> None:
        if production:
            raise ConfigurationError(
                "the 'local' KMS provider refuses production mode; configure aws, vault, gcp "
                "or azure",
                code=ErrorCode.CONFIG_LOCAL_IN_PRODUCTION,
                provider=self.name,
            )
        self._path = Path(master_key_file)
        master = load_or_create_key_file(self._path, "local master key file", _invalid_master_key)
        self._aead = AESGCM(master)
        # A fingerprint names the master key without revealing it (first 8 bytes of SHA-256).
        self._key_id = "local:" + hashlib.sha256(b"tenantkeys-local" + master).hexdigest()[:16]
        del master

    @property
    def key_id(self) -> str:
        return self._key_id

    def encrypt(self, plaintext: bytes, context: Context) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        # Context binding: the canonical context is the associated data.
        return _MAGIC + nonce + self._aead.encrypt(nonce, plaintext, canonical_context(context))

    def decrypt(self, ciphertext: bytes, context: Context) -> bytearray:
        if not ciphertext.startswith(_MAGIC) or len(ciphertext) < len(_MAGIC) + _NONCE_BYTES + 16:
            raise IntegrityError(
                "ciphertext is not a local-provider wrapped key", provider=self.name
            )
        nonce = ciphertext[len(_MAGIC) : len(_MAGIC) + _NONCE_BYTES]
        body = ciphertext[len(_MAGIC) + _NONCE_BYTES :]
        try:
            return bytearray(self._aead.decrypt(nonce, body, canonical_context(context)))
        except InvalidTag:
            raise IntegrityError(
                "wrapped key does not open under this context (wrong tenant, purpose, version "
                "or kid, another master key, or tampering)",
                provider=self.name,
                provider_code="InvalidTag",
            ) from None

    def describe(self) -> KeyDescription:
        return KeyDescription(
            provider=self.name,
            key_id=self._key_id,
            enabled=True,
            algorithm="AES_256_GCM",
            details={"master_key_file": str(self._path)},
        )


def load_or_create_key_file(
    path: Path, describe: str, invalid: Callable[[str], TenantKeysError]
) -> bytes:
    """Read a 32-byte key file, creating it with mode 0600 on first use.

    ``describe`` names the file in errors ("local master key file"); ``invalid(problem)`` builds
    the error to raise when the file is unreadable, too open or the wrong size. The dead-letter
    store keeps its key the same way.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = os.urandom(_KEY_BYTES)
        # Written to a private temp file, then linked into place: readers never see half a key.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process created it first: use theirs
            return load_or_create_key_file(path, describe, invalid)
        finally:
            tmp.unlink()
        return key
    except OSError as exc:
        raise invalid(f"{describe} {path} cannot be read ({exc.strerror})") from exc
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise invalid(
            f"{describe} {path} has mode {mode:04o}; it must be readable by its owner only (0600)"
        )
    if len(data) != _KEY_BYTES:
        raise invalid(f"{describe} {path} holds {len(data)} bytes, not a {_KEY_BYTES}-byte key")
    return data


def _invalid_master_key(problem: str) -> ConfigurationError:
    return ConfigurationError(problem, code=ErrorCode.MASTER_KEY_INVALID, provider="local")
