"""The signing-time proof of a signature: its RFC 3161 timestamp token, checked when possible.

The hook between evidence bundles and :mod:`tenantkeys.signing.timestamps` (the token is the
base64 DER ``TimeStampResp`` over SHA-256 of the JWS signature segment). That module, and the
``rfc3161-client`` it needs, are imported when a token is checked, never at import time: a
bundle is read and its signatures verified whether they are installed or not; without them a
token proves nothing here (:class:`TimestampUnchecked`). The revocation rule itself (genTime
plus accuracy strictly before ``revoked_at``) is the timestamp module's, not repeated here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tenantkeys.errors import (
    ConfigurationError,
    ErrorCode,
    KeyRevoked,
    TenantKeysError,
    VerificationError,
)

#: Where ``verify_timestamp``, ``latest_time`` and ``signed_before_revocation`` live.
TIMESTAMP_MODULE = "tenantkeys.signing.timestamps"


class TimestampUnchecked(Exception):
    """The token could not be checked here (no timestamp module or library); it proves nothing."""


def _timestamps() -> Any:
    try:
        return importlib.import_module(TIMESTAMP_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == TIMESTAMP_MODULE:
            raise TimestampUnchecked(f"{TIMESTAMP_MODULE} is not installed") from None
        raise


def proven_signing_time(token: str, jws: str, trust: Sequence[bytes]) -> datetime:
    """The latest time the JWS signature can have existed (genTime plus accuracy), once the
    token is checked against ``trust`` (the TSA CA certificates, PEM).

    Raises :class:`TimestampUnchecked` when the token cannot be checked here, and
    ``TK-EVIDENCE-TIMESTAMP-INVALID`` when it does not verify, does not cover this JWS, or
    chains to no certificate in ``trust``.
    """
    module = _timestamps()
    if not trust:
        raise VerificationError(
            "the signature has a timestamp but the bundle holds no TSA certificate to check it "
            "against; give one with --tsa-ca",
            code=ErrorCode.EVIDENCE_TIMESTAMP_INVALID,
        )
    anchors = b"\n".join(pem.rstrip(b"\n") + b"\n" for pem in trust)
    try:
        module.verify_timestamp(token, jws, anchors)
        latest: datetime = module.latest_time(token)
    except ConfigurationError as exc:  # the RFC 3161 libraries are not installed
        raise TimestampUnchecked(exc.message) from None
    except TenantKeysError as exc:
        raise VerificationError(
            f"the timestamp does not verify: {exc.code}: {exc.message}",
            code=ErrorCode.EVIDENCE_TIMESTAMP_INVALID,
        ) from None
    except Exception as exc:  # a hostile token may break a DER parser in any way
        raise VerificationError(
            f"the timestamp does not verify ({type(exc).__name__})",
            code=ErrorCode.EVIDENCE_TIMESTAMP_INVALID,
        ) from None
    return latest


def proves_before(token: str, revoked_at: datetime) -> bool:
    """Whether the (checked) ``token`` proves its signature existed before ``revoked_at``."""
    try:
        _timestamps().signed_before_revocation(token, revoked_at)
    except KeyRevoked:
        return False
    return True
