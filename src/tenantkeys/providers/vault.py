"""The ``vault`` provider: Vault (or OpenBao) Transit through hvac.

The Transit key must be ``derived=true`` (type ``aes256-gcm96``): the canonical context is the
key-derivation ``context`` *and* the AES-GCM ``associated_data``, so a wrapped key only opens
under the context it was sealed with. Ciphertexts are Vault's own ``vault:vN:...`` strings,
stored as bytes, so Transit key rotation and ``min_decryption_version`` keep working.

Authentication: ``token`` (hvac reads ``VAULT_TOKEN`` or ``~/.vault-token``), ``approle``
(role id from settings, secret id from a file) or ``kubernetes`` (service-account JWT file).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar

import hvac
import requests
from hvac import exceptions as hvac_errors

from tenantkeys.errors import (
    ConfigurationError,
    ErrorCode,
    IntegrityError,
    KmsConfigError,
    KmsPermissionError,
    TenantKeysError,
    TransientKmsError,
)
from tenantkeys.providers.base import (
    CommonSettings,
    Context,
    KeyDescription,
    KmsProvider,
    ProviderSettings,
    canonical_context,
)

POLICY_DOC = "docs/setup/VAULT_SETUP.md#policy"
#: Where Kubernetes mounts the pod's service-account JWT.
SERVICE_ACCOUNT_TOKEN_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
_PREFIX = b"vault:v"
_T = TypeVar("_T")


class VaultSettings(ProviderSettings):
    """``TENANTKEYS_VAULT_*``: the Transit key, and how to log in (``auth``)."""

    provider: ClassVar[str] = "vault"
    setup_doc: ClassVar[str] = "docs/setup/VAULT_SETUP.md"
    #: What each auth method needs besides the address and the key.
    AUTH_NEEDS: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "token": (),
        "approle": ("role_id", "secret_id_file"),
        "kubernetes": ("kubernetes_role",),
    }

    addr: str
    key_name: str
    namespace: str | None = None
    mount: str = "transit"
    #: ``token`` reads hvac's own VAULT_TOKEN (or ~/.vault-token), never a setting of ours.
    auth: Literal["token", "approle", "kubernetes"] = "token"
    role_id: str | None = None
    #: The AppRole secret id stays in a file (a mounted secret), not in the environment.
    secret_id_file: Path | None = None
    approle_mount: str = "approle"
    kubernetes_role: str | None = None
    kubernetes_mount: str = "kubernetes"
    kubernetes_token_file: Path = SERVICE_ACCOUNT_TOKEN_FILE
    #: CA bundle for a Vault whose certificate the system store does not know.
    ca_cert: str | None = None

    def missing_settings(self) -> tuple[str, ...]:
        return tuple(name for name in self.AUTH_NEEDS[self.auth] if getattr(self, name) is None)


class VaultTransitProvider(KmsProvider):
    """Wraps data keys with a derived Vault Transit key."""

    name = "vault"
    settings_model = VaultSettings

    @classmethod
    def from_settings(cls, values: Mapping[str, object], common: CommonSettings) -> Self:
        settings = VaultSettings.parse(values)
        return cls(
            settings.addr,
            settings.key_name,
            mount=settings.mount,
            namespace=settings.namespace,
            auth=settings.auth,
            role_id=settings.role_id,
            approle_mount=settings.approle_mount,
            kubernetes_role=settings.kubernetes_role,
            kubernetes_mount=settings.kubernetes_mount,
            kubernetes_token_file=settings.kubernetes_token_file,
            ca_cert=settings.ca_cert,
            secret_id_file=settings.secret_id_file,
            timeout=common.timeout,
        )

    def __init__(
        self,
        addr: str,
        key_name: str,
        *,
        mount: str = "transit",
        namespace: str | None = None,
        auth: str = "token",
        role_id: str | None = None,
        approle_mount: str = "approle",
        kubernetes_role: str | None = None,
        kubernetes_mount: str = "kubernetes",
        kubernetes_token_file: Path | str = SERVICE_ACCOUNT_TOKEN_FILE,
        ca_cert: str | None = None,
        secret_id_file: Path | str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if auth not in {"token", "approle", "kubernetes"}:
            raise ConfigurationError(
                f"unknown Vault auth method {auth!r}; use token, approle or kubernetes",
                provider=self.name,
            )
        self._addr = addr.rstrip("/")
        self._key_name = key_name
        self._mount = mount.strip("/")
        self._auth = auth
        self._role_id = role_id
        self._approle_mount = approle_mount
        self._kubernetes_role = kubernetes_role
        self._kubernetes_mount = kubernetes_mount
        self._kubernetes_token_file = Path(kubernetes_token_file)
        self._secret_id_file = Path(secret_id_file) if secret_id_file else None
        verify: str | bool = ca_cert or True
        self._client = hvac.Client(url=addr, namespace=namespace, verify=verify, timeout=timeout)
        if auth != "token":
            self._login()

    @property
    def key_id(self) -> str:
        return f"{self._addr}/v1/{self._mount}/keys/{self._key_name}"

    def encrypt(self, plaintext: bytes, context: Context) -> bytes:
        body = {"plaintext": _b64(plaintext), **_bound(context)}
        reply = self._call("encrypt", lambda: self._write("encrypt", body))
        return str(reply["data"]["ciphertext"]).encode()

    def decrypt(self, ciphertext: bytes, context: Context) -> bytearray:
        if not ciphertext.startswith(_PREFIX):
            raise IntegrityError("ciphertext is not a Vault Transit ciphertext", provider=self.name)
        body = {"ciphertext": ciphertext.decode("ascii", "replace"), **_bound(context)}
        reply = self._call("decrypt", lambda: self._write("decrypt", body))
        return bytearray(base64.b64decode(reply["data"]["plaintext"]))

    def describe(self) -> KeyDescription:
        reply = self._call(
            "keys",
            lambda: self._client.secrets.transit.read_key(
                name=self._key_name, mount_point=self._mount
            ),
        )
        data: dict[str, Any] = reply["data"]
        if not data.get("derived"):
            raise KmsConfigError(
                f"Vault Transit key {self._mount}/keys/{self._key_name} is not derived; create "
                "it with derived=true so each wrapped key is bound to its tenant context",
                code=ErrorCode.CONFIG_INVALID,
                provider=self.name,
            )
        return KeyDescription(
            provider=self.name,
            key_id=self.key_id,
            enabled=bool(data.get("supports_encryption", True)),
            algorithm=str(data.get("type", "")),
            details={
                "latest_version": data.get("latest_version"),
                "min_decryption_version": data.get("min_decryption_version"),
                "derived": True,
            },
        )

    def close(self) -> None:
        self._client.adapter.close()

    def _write(self, operation: str, body: dict[str, str]) -> dict[str, Any]:
        path = f"{self._mount}/{operation}/{self._key_name}"
        reply: dict[str, Any] = self._client.write_data(path, data=body)
        return reply

    def _call(self, operation: str, call: Callable[[], _T]) -> _T:
        """Run ``call``; with AppRole or Kubernetes auth, log in again once if the token expired."""
        try:
            with self._translate(operation):
                return call()
        except KmsPermissionError:
            if self._auth == "token":
                raise
        self._login()
        with self._translate(operation):
            return call()

    def _login(self) -> None:
        with self._translate("login"):
            if self._auth == "approle":
                if not self._role_id or not self._secret_id_file:
                    raise ConfigurationError(
                        "Vault AppRole auth needs TENANTKEYS_VAULT_ROLE_ID and "
                        "TENANTKEYS_VAULT_SECRET_ID_FILE",
                        code=ErrorCode.CONFIG_MISSING_SETTING,
                        provider=self.name,
                    )
                self._client.auth.approle.login(
                    role_id=self._role_id,
                    secret_id=_read_secret(self._secret_id_file),
                    mount_point=self._approle_mount,
                )
            else:
                if not self._kubernetes_role:
                    raise ConfigurationError(
                        "Vault Kubernetes auth needs TENANTKEYS_VAULT_KUBERNETES_ROLE",
                        code=ErrorCode.CONFIG_MISSING_SETTING,
                        provider=self.name,
                    )
                self._client.auth.kubernetes.login(
                    role=self._kubernetes_role,
                    jwt=_read_secret(self._kubernetes_token_file),
                    mount_point=self._kubernetes_mount,
                )

    @contextmanager
    def _translate(self, operation: str) -> Iterator[None]:
        try:
            yield
        except (hvac_errors.VaultError, requests.RequestException) as exc:
            raise map_error(exc, operation, self._mount, self._key_name) from exc


def map_error(exc: Exception, operation: str, mount: str, key_name: str) -> TenantKeysError:
    """The tenantkeys error for an hvac/requests error raised by ``operation`` on the key."""
    code = type(exc).__name__
    errors = getattr(exc, "errors", None) or []
    text = "; ".join(" ".join(str(error).split()) for error in errors) or str(exc)
    if isinstance(exc, requests.Timeout):
        return TransientKmsError(
            f"Vault timed out during {operation}: {exc}",
            code=ErrorCode.KMS_TIMEOUT,
            provider="vault",
            provider_code=code,
        )
    if isinstance(exc, requests.RequestException):
        return TransientKmsError(
            f"Vault cannot be reached during {operation}: {exc}",
            code=ErrorCode.KMS_UNAVAILABLE,
            provider="vault",
            provider_code=code,
        )
    login_refused = hvac_errors.InvalidRequest | hvac_errors.Forbidden | hvac_errors.Unauthorized
    if operation == "login" and isinstance(exc, login_refused):
        return KmsPermissionError(
            f"Vault refused the login ({text}); check TENANTKEYS_VAULT_ROLE_ID and the secret "
            "id file (AppRole) or TENANTKEYS_VAULT_KUBERNETES_ROLE and the service-account "
            f"token (Kubernetes); see {POLICY_DOC}",
            provider="vault",
            provider_code=code,
        )
    if isinstance(exc, hvac_errors.Forbidden | hvac_errors.Unauthorized):
        return KmsPermissionError(
            f"Vault denied {operation} on {mount}/{operation}/{key_name} ({text}). The token's "
            f'policy needs: path "{mount}/encrypt/{key_name}" and "{mount}/decrypt/{key_name}" '
            f'with capabilities ["update"], path "{mount}/keys/{key_name}" with ["read"]; '
            f"see {POLICY_DOC}",
            provider="vault",
            provider_code=code,
        )
    if isinstance(exc, hvac_errors.RateLimitExceeded):
        return TransientKmsError(
            f"Vault throttled {operation}: {text}",
            code=ErrorCode.KMS_THROTTLED,
            provider="vault",
            provider_code=code,
        )
    if isinstance(
        exc,
        hvac_errors.VaultDown
        | hvac_errors.InternalServerError
        | hvac_errors.BadGateway
        | hvac_errors.VaultNotInitialized
        | hvac_errors.PreconditionFailed,
    ):
        return TransientKmsError(
            f"Vault could not serve {operation} (sealed, down or erroring): {text}",
            provider="vault",
            provider_code=code,
        )
    missing = "not found" in text.lower() or isinstance(exc, hvac_errors.InvalidPath)
    if missing:
        return KmsConfigError(
            f"Vault Transit key {mount}/keys/{key_name} (or the {mount!r} mount) does not "
            f"exist: {text}; check TENANTKEYS_VAULT_MOUNT and TENANTKEYS_VAULT_KEY_NAME",
            code=ErrorCode.KMS_KEY_NOT_FOUND,
            provider="vault",
            provider_code=code,
        )
    if operation == "decrypt" and isinstance(exc, hvac_errors.InvalidRequest):
        return IntegrityError(
            "Vault refused to decrypt: the wrapped key does not open under this context "
            f"(context mismatch: wrong tenant, purpose, version or kid; or tampering): {text}",
            provider="vault",
            provider_code=code,
        )
    return KmsConfigError(
        f"Vault rejected {operation} on {mount}/{operation}/{key_name}: {text}",
        code=ErrorCode.CONFIG_INVALID,
        provider="vault",
        provider_code=code,
    )


def _bound(context: Context) -> dict[str, str]:
    # Context binding: the same canonical bytes derive the key and are the GCM associated data.
    canonical = _b64(canonical_context(context))
    return {"context": canonical, "associated_data": canonical}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read Vault credential file {path} ({exc.strerror})",
            code=ErrorCode.CONFIG_INVALID,
            provider="vault",
        ) from exc
