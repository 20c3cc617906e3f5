"""Dead letters' original arguments, sealed with AES-256-GCM under a key file of our own.

It is not a KMS key on purpose: jobs are dead-lettered precisely when the KMS is out, and
replaying them after the outage must not depend on the KMS having come back in the same state.
The entry id is the associated data, so a sealed blob cannot be swapped between entries.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tenantkeys.errors import ConfigurationError, ErrorCode
from tenantkeys.providers.local import load_or_create_key_file

_KEY_BYTES = 32
_NONCE_BYTES = 12


class ArgumentSealer:
    """AES-256-GCM under the dead-letter key; associated data = the entry id."""

    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY_BYTES:
            raise ValueError("the dead-letter key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> ArgumentSealer:
        return cls(load_or_create_key(path))

    def seal(self, entry_id: str, data: Mapping[str, Any]) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        body = self._aead.encrypt(nonce, json.dumps(data).encode(), entry_id.encode())
        return base64.b64encode(nonce + body).decode("ascii")

    def open(self, entry_id: str, sealed: str) -> dict[str, Any]:
        raw = base64.b64decode(sealed)
        try:
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], entry_id.encode())
        except InvalidTag:
            raise ConfigurationError(
                f"dead letter {entry_id} does not open: another TENANTKEYS_DEAD_LETTER_KEY_FILE "
                "sealed it, or it was tampered with",
                code=ErrorCode.CONFIG_INVALID,
            ) from None
        opened: dict[str, Any] = json.loads(plain)
        return opened


def load_or_create_key(path: Path) -> bytes:
    """Read the 32-byte dead-letter key, creating it (mode 0600) on first use."""
    return load_or_create_key_file(path, "dead-letter key file", _invalid_key)


def _invalid_key(problem: str) -> ConfigurationError:
    return ConfigurationError(
        f"{problem}; see TENANTKEYS_DEAD_LETTER_KEY_FILE", code=ErrorCode.CONFIG_INVALID
    )
