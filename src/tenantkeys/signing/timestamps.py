"""RFC 3161 trusted timestamps over a JWS signature: ask a time-stamping authority, check a token.

What is stamped: SHA-256 over the ASCII bytes of the compact JWS's third segment (the
base64url signature), so ``openssl ts -verify -data SEGMENT_FILE -in TOKEN.tsr -CAfile
tsa.pem`` checks a token with no code of ours. The token a :class:`Signature` carries is the
whole ``TimeStampResp`` (status and ``TimeStampToken``), DER, in standard base64: that is
what a TSA sends and what ``openssl ts -verify -in`` and ``rfc3161-client`` read as they are.

Verification uses ``rfc3161-client`` (Trail of Bits): the CMS signature, the chain to the
trusted CA at the token's genTime, the TSA certificate's critical ``timeStamping`` EKU and the
message imprint. docs/verifying.md#timestamps has the format and the revocation rule.
"""

from __future__ import annotations

import base64
import binascii
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography import x509

from tenantkeys.config.urls import masked_url
from tenantkeys.errors import (
    ConfigurationError,
    ErrorCode,
    InvalidRequest,
    KeyRevoked,
    TenantKeysError,
    TransientError,
    VerificationError,
)

if TYPE_CHECKING:
    from rfc3161_client import TimeStampRequest, TimeStampResponse

#: RFC 3161 section 3.4: the media types of a request and of a reply over HTTP.
QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
#: A reply larger than this is not a timestamp (a token with its chain is a few KiB).
MAX_REPLY_BYTES = 64 * 1024
SHA256_OID = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.1")


class TimestampSettings(Protocol):
    """The settings a :class:`Timestamper` is built from (``tenantkeys.config.Settings``)."""

    @property
    def tsa_url(self) -> str | None: ...
    @property
    def tsa_ca_file(self) -> Path | None: ...
    @property
    def tsa_timeout_seconds(self) -> float: ...


def stamped_bytes(jws: str) -> bytes:
    """The bytes a token's imprint covers: the ASCII third segment of the compact JWS."""
    parts = jws.split(".") if isinstance(jws, str) else []
    if len(parts) != 3 or not parts[2] or not parts[2].isascii():
        raise InvalidRequest(
            "not a compact JWS (three dot-separated parts): nothing to timestamp",
            code=ErrorCode.INVALID_JWS,
        )
    return parts[2].encode("ascii")


def _require_library() -> None:
    """``TK-CONFIG-INVALID`` naming the extra when the RFC 3161 libraries are not installed."""
    try:
        import pyasn1_modules  # noqa: F401
        import rfc3161_client  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "trusted timestamps need the RFC 3161 libraries: pip install 'tenantkeys[timestamps]'"
        ) from None


def request_timestamp(url: str, jws: str, timeout: float) -> str:
    """Ask the TSA at ``url`` for a token over ``jws``'s signature; base64 of the reply.

    A TSA that does not answer (network, timeout, HTTP 5xx) is ``TK-TSA-UNAVAILABLE``
    (retried); one that refuses or answers about another message is ``TK-TSA-REFUSED``.
    """
    _require_library()
    from rfc3161_client import HashAlgorithm, TimestampRequestBuilder

    request = (
        TimestampRequestBuilder()
        .data(stamped_bytes(jws))
        .hash_algorithm(HashAlgorithm.SHA256)
        .nonce(nonce=True)
        .cert_request(cert_request=True)  # the TSA certificate travels in the token
        .build()
    )
    reply = _post(url, request.as_bytes(), timeout)
    shown = masked_url(url)  # a password in the URL never reaches a message
    try:
        _check_reply(_decode(reply, refused=True), request, shown)
    except TenantKeysError:
        raise
    except Exception as exc:  # the reply's DER, parsed lazily, may break in any way
        raise ConfigurationError(
            f"the TSA at {shown} sent an unreadable TimeStampResp ({str(exc)[:120]})",
            code=ErrorCode.TSA_REFUSED,
        ) from None
    return base64.b64encode(reply).decode("ascii")


def _check_reply(response: TimeStampResponse, request: TimeStampRequest, shown: str) -> None:
    if response.status not in (0, 1):  # granted, grantedWithMods (RFC 3161 section 2.4.2)
        detail = "; ".join(response.status_string) or "no reason given"
        raise ConfigurationError(
            f"the TSA at {shown} refused the request (PKIStatus {response.status}: {detail[:200]})",
            code=ErrorCode.TSA_REFUSED,
        )
    info = response.tst_info
    if info.message_imprint.message != request.message_imprint.message or (
        info.nonce != request.nonce
    ):
        raise ConfigurationError(
            f"the TSA at {shown} answered with a token over another message or nonce",
            code=ErrorCode.TSA_REFUSED,
        )


def verify_timestamp(token: str, jws: str, trust: bytes | Path | str) -> datetime:
    """The genTime (UTC) of ``token`` when it is a TSA's token over ``jws``'s signature.

    ``trust`` is the TSA's CA certificates, as PEM bytes or a path to a PEM file. Raises
    ``TK-TIMESTAMP-INVALID`` when the token is not over this signature, is not signed by a
    TSA certificate (critical ``timeStamping`` EKU) that chains to ``trust``, or is unreadable.
    """
    _require_library()
    roots = _trusted(trust)
    data = _token_bytes(token)
    try:
        return _verified_gen_time(data, stamped_bytes(jws), roots)
    except TenantKeysError:
        raise
    except Exception as exc:  # a hostile token may break the DER parser in any way
        raise VerificationError(
            f"the timestamp does not hold for this JWS: {str(exc)[:200]}",
            code=ErrorCode.TIMESTAMP_INVALID,
        ) from None


def _verified_gen_time(data: bytes, stamped: bytes, roots: list[x509.Certificate]) -> datetime:
    from rfc3161_client import VerifierBuilder

    response = _decode(data, refused=False)
    if response.tst_info.message_imprint.hash_algorithm != SHA256_OID:
        raise VerificationError(
            "the timestamp's imprint is not SHA-256", code=ErrorCode.TIMESTAMP_INVALID
        )
    builder = VerifierBuilder()
    for certificate in roots:
        builder = builder.add_root_certificate(certificate)
    builder.build().verify_message(response, stamped)  # rfc3161-client's VerificationError
    gen_time, _ = _gen_time(response.as_bytes())
    # rfc3161-client reads genTime to the second; ours keeps the fraction. Same instant?
    if gen_time.replace(microsecond=0) != _utc(response.tst_info.gen_time):
        raise VerificationError(
            "the timestamp's genTime reads two ways", code=ErrorCode.TIMESTAMP_INVALID
        )
    return gen_time


def latest_time(token: str) -> datetime:
    """genTime plus the token's stated accuracy: the latest the signature can have existed.

    Read without checking; call :func:`verify_timestamp` first.
    """
    gen_time, accuracy = _gen_time(_token_bytes(token))
    return gen_time + accuracy


def signed_before_revocation(token: str, revoked_at: datetime) -> datetime:
    """The stamped time when it proves the signature existed before ``revoked_at``.

    ``TK-KEY-REVOKED`` when it does not: genTime plus the token's accuracy must be strictly
    earlier than the revocation, or the signature could have been made with a revoked key.
    """
    latest = latest_time(token)
    if latest >= _utc(revoked_at):
        raise KeyRevoked(
            f"timestamped at {latest.isoformat()} (genTime plus accuracy), not before the key "
            f"was revoked at {_utc(revoked_at).isoformat()}; signature refused"
        )
    return latest


@dataclass(frozen=True)
class Timestamper:
    """Stamps each new signature; built from the settings when ``TENANTKEYS_TSA_URL`` is set."""

    url: str
    timeout: float
    #: When set, each fresh token is verified before the signature is issued.
    trust: Path | None = None

    @classmethod
    def from_settings(cls, settings: TimestampSettings) -> Timestamper | None:
        if not settings.tsa_url:
            return None
        return cls(settings.tsa_url, settings.tsa_timeout_seconds, settings.tsa_ca_file)

    def stamp(self, jws: str) -> str:
        token = request_timestamp(self.url, jws, self.timeout)
        if self.trust is not None:
            try:
                verify_timestamp(token, jws, self.trust)
            except VerificationError as exc:
                shown = masked_url(self.url)
                # The TSA is the wrong one (or its CA file is): an operator fixes that.
                raise ConfigurationError(
                    f"the TSA at {shown} answered with a token that does not verify against "
                    f"TENANTKEYS_TSA_CA_FILE: {exc.message}",
                    code=ErrorCode.TSA_REFUSED,
                ) from None
        return token


def _post(url: str, body: bytes, timeout: float) -> bytes:
    if not url.startswith(("http://", "https://")):
        raise InvalidRequest("the TSA URL must be an http(s) URL")
    shown = masked_url(url)
    headers = {"Content-Type": QUERY_TYPE, "Accept": REPLY_TYPE}
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310 - http(s) checked above
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 - as above
            data: bytes = reply.read(MAX_REPLY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise TransientError(
                f"the TSA at {shown} answered HTTP {exc.code}", code=ErrorCode.TSA_UNAVAILABLE
            ) from None
        raise ConfigurationError(
            f"the TSA at {shown} answered HTTP {exc.code}: check TENANTKEYS_TSA_URL",
            code=ErrorCode.TSA_REFUSED,
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientError(
            f"the TSA at {shown} did not answer within {timeout:g} s ({reason})",
            code=ErrorCode.TSA_UNAVAILABLE,
        ) from None
    if len(data) > MAX_REPLY_BYTES:
        raise ConfigurationError(
            f"the TSA at {shown} sent more than {MAX_REPLY_BYTES} bytes: not a timestamp reply",
            code=ErrorCode.TSA_REFUSED,
        )
    return data


def _decode(data: bytes, *, refused: bool) -> TimeStampResponse:
    from rfc3161_client import decode_timestamp_response

    try:
        return decode_timestamp_response(data)
    except ValueError:
        if refused:
            raise ConfigurationError(
                "the TSA's reply is not a DER TimeStampResp", code=ErrorCode.TSA_REFUSED
            ) from None
        raise VerificationError(
            "the timestamp is not a DER RFC 3161 TimeStampResp", code=ErrorCode.TIMESTAMP_INVALID
        ) from None


def _gen_time(response: bytes) -> tuple[datetime, timedelta]:
    """genTime with its fraction of a second, and the accuracy (zero when absent).

    rfc3161-client truncates genTime to whole seconds; near a revocation the fraction
    decides, so the TSTInfo is read again here with pyasn1 (RFC 3161 and RFC 5652 modules).
    """
    from pyasn1.codec.der import decoder
    from pyasn1_modules import rfc3161, rfc5652

    try:
        reply, _ = decoder.decode(response, asn1Spec=rfc3161.TimeStampResp())
        signed, _ = decoder.decode(
            reply["timeStampToken"]["content"], asn1Spec=rfc5652.SignedData()
        )
        info, _ = decoder.decode(
            bytes(signed["encapContentInfo"]["eContent"]), asn1Spec=rfc3161.TSTInfo()
        )
        gen_time = _utc(info["genTime"].asDateTime)
        accuracy = timedelta(0)
        if info["accuracy"].isValue:
            parts = info["accuracy"]
            accuracy = timedelta(
                seconds=int(parts["seconds"]) if parts["seconds"].isValue else 0,
                milliseconds=int(parts["millis"]) if parts["millis"].isValue else 0,
                microseconds=int(parts["micros"]) if parts["micros"].isValue else 0,
            )
    except Exception:  # PyAsn1Error and whatever else a hostile token breaks
        raise VerificationError(
            "the timestamp's TSTInfo is unreadable", code=ErrorCode.TIMESTAMP_INVALID
        ) from None
    return gen_time, accuracy


def _token_bytes(token: str) -> bytes:
    try:
        return base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise VerificationError(
            "the timestamp is not standard base64", code=ErrorCode.TIMESTAMP_INVALID
        ) from None


def _trusted(trust: bytes | Path | str) -> list[x509.Certificate]:
    if isinstance(trust, bytes):
        pem, where = trust, "the trusted CA certificates"
    else:
        try:
            pem, where = Path(trust).read_bytes(), str(trust)
        except OSError as exc:
            raise InvalidRequest(f"cannot read the TSA CA file {trust}: {exc.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certificates = []
    if not certificates:
        raise InvalidRequest(f"{where} holds no PEM certificate (the TSA's CA)")
    return certificates


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


__all__ = [
    "Timestamper",
    "latest_time",
    "request_timestamp",
    "signed_before_revocation",
    "stamped_bytes",
    "verify_timestamp",
]
