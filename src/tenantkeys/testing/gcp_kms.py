"""A loopback gRPC Cloud KMS: Encrypt, Decrypt and GetCryptoKey with real AES-GCM keys.

It speaks the real wire protocol (proto-plus types serialize/deserialize), so the real
``KeyManagementServiceClient`` drives it. AAD is enforced by AES-GCM, CRC32C fields are
computed and checked honestly, and switches make it deny, fail, answer slowly or corrupt.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.cloud import kms
from google.cloud.kms_v1.services.key_management_service.transports.grpc import (
    KeyManagementServiceGrpcTransport,
)

from tenantkeys.providers.gcp import crc32c

SERVICE = "google.cloud.kms.v1.KeyManagementService"
KEY_NAME = "projects/tk-test/locations/global/keyRings/tenantkeys/cryptoKeys/wrapping"
_State = kms.CryptoKeyVersion.CryptoKeyVersionState


@dataclass
class Switches:
    """Failure modes; reset between tests."""

    deny: bool = False
    unavailable: bool = False
    delay_seconds: float = 0.0
    corrupt_checksums: bool = False
    disabled: bool = False

    def reset(self) -> None:
        self.deny = self.unavailable = self.corrupt_checksums = self.disabled = False
        self.delay_seconds = 0.0


@dataclass
class _Key:
    versions: dict[int, bytes] = field(default_factory=dict)
    primary: int = 1


class GcpKmsStandIn:
    """In-process gRPC server; ``target`` is ``127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self.switches = Switches()
        self.keys: dict[str, _Key] = {KEY_NAME: _Key({1: AESGCM.generate_key(256)})}
        self.key_name = KEY_NAME
        self.calls = 0
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers: dict[str, grpc.RpcMethodHandler] = {
            "Encrypt": _unary(self._encrypt, kms.EncryptRequest, kms.EncryptResponse),
            "Decrypt": _unary(self._decrypt, kms.DecryptRequest, kms.DecryptResponse),
            "GetCryptoKey": _unary(self._get, kms.GetCryptoKeyRequest, kms.CryptoKey),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    def transport(self) -> KeyManagementServiceGrpcTransport:
        """A client transport on an insecure loopback channel (no Google credentials needed)."""
        return KeyManagementServiceGrpcTransport(channel=grpc.insecure_channel(self.target))

    def _gate(self, context: grpc.ServicerContext, name: str) -> _Key:
        with self._lock:
            self.calls += 1
        if self.switches.delay_seconds:
            time.sleep(self.switches.delay_seconds)
        if self.switches.unavailable:
            _abort(context, grpc.StatusCode.UNAVAILABLE, "The service is currently unavailable.")
        if self.switches.deny:
            _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied on '{name}'",
            )
        key = self.keys.get(name.split("/cryptoKeyVersions/", maxsplit=1)[0])
        if key is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"{name} not found.")
        return key

    def _usable(self, context: grpc.ServicerContext, name: str) -> _Key:
        key = self._gate(context, name)
        if self.switches.disabled:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"{name} version is DISABLED")
        return key

    def _encrypt(self, request: Any, context: grpc.ServicerContext) -> Any:
        key = self._usable(context, request.name)
        _check_crc(context, request.plaintext, request.plaintext_crc32c)
        aad = request.additional_authenticated_data
        _check_crc(context, aad, request.additional_authenticated_data_crc32c)
        nonce = os.urandom(12)
        body = AESGCM(key.versions[key.primary]).encrypt(nonce, request.plaintext, aad)
        ciphertext = key.primary.to_bytes(4, "big") + nonce + body
        checksum = crc32c(ciphertext) ^ (1 if self.switches.corrupt_checksums else 0)
        return kms.EncryptResponse(
            name=f"{request.name}/cryptoKeyVersions/{key.primary}",
            ciphertext=ciphertext,
            ciphertext_crc32c=checksum,
            verified_plaintext_crc32c=request.plaintext_crc32c is not None,
            verified_additional_authenticated_data_crc32c=(
                request.additional_authenticated_data_crc32c is not None
            ),
        )

    def _decrypt(self, request: Any, context: grpc.ServicerContext) -> Any:
        key = self._usable(context, request.name)
        _check_crc(context, request.ciphertext, request.ciphertext_crc32c)
        aad = request.additional_authenticated_data
        _check_crc(context, aad, request.additional_authenticated_data_crc32c)
        blob = bytes(request.ciphertext)
        material = key.versions.get(int.from_bytes(blob[:4], "big"))
        try:
            if material is None:
                raise InvalidTag
            plaintext = AESGCM(material).decrypt(blob[4:16], blob[16:], aad)
        except (InvalidTag, ValueError):
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "Decryption failed: the ciphertext is invalid.",
            )
        checksum = crc32c(plaintext) ^ (1 if self.switches.corrupt_checksums else 0)
        return kms.DecryptResponse(plaintext=plaintext, plaintext_crc32c=checksum)

    def _get(self, request: Any, context: grpc.ServicerContext) -> Any:
        key = self._gate(context, request.name)
        state = _State.DISABLED if self.switches.disabled else _State.ENABLED
        return kms.CryptoKey(
            name=request.name,
            purpose=kms.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT,
            primary=kms.CryptoKeyVersion(
                name=f"{request.name}/cryptoKeyVersions/{key.primary}",
                state=state,
                algorithm=kms.CryptoKeyVersion.CryptoKeyVersionAlgorithm.GOOGLE_SYMMETRIC_ENCRYPTION,
                protection_level=kms.ProtectionLevel.SOFTWARE,
            ),
        )


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the RPC with ``code``: ``context.abort`` raises, but grpc has no types saying so."""
    context.abort(code, details)
    raise AssertionError("unreachable: ServicerContext.abort raises")


def _check_crc(context: grpc.ServicerContext, data: bytes, checksum: int | None) -> None:
    if checksum is not None and checksum != crc32c(bytes(data)):
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "The checksum in field was incorrect.")


def _unary(
    handler: Callable[[Any, grpc.ServicerContext], Any], request_type: Any, response_type: Any
) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        handler,
        request_deserializer=request_type.deserialize,
        response_serializer=response_type.serialize,
    )
