"""The world a run owns: a work directory, settings, tenants, KMS servers; all removed at the end.

Redis is shared with other users of this machine, so the bench writes only to database 8 under
a private prefix and deletes every key under it when it closes. moto and OpenBao are started
with the stand-ins the integration tests use (:mod:`tenantkeys.testing`) on free loopback ports
and stopped by their own handles.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from bench.harness import Mode
from tenantkeys.config import ENV_PREFIX, Settings, load_settings
from tenantkeys.keys.runtime import Runtime, build_runtime

if TYPE_CHECKING:
    from tenantkeys.testing.moto_kms import MotoKms
    from tenantkeys.testing.openbao import OpenBao

log = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/8"
REPO_ROOT = Path(__file__).resolve().parents[1]
AWS_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def tenant_name(index: int) -> str:
    return f"bench-{index:05d}"


class BenchEnv:
    """Owns everything a run creates; :meth:`close` removes it (keys, files, processes)."""

    def __init__(self, mode: Mode, redis_url: str = DEFAULT_REDIS_URL, keep: bool = False) -> None:
        self.mode = mode
        #: What one scenario leaves for a later one (say, the measured maximum job rate).
        self.shared: dict[str, Any] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="tkbench-"))
        self.redis_url = redis_url
        self.prefix = f"tkbench-{uuid.uuid4().hex[:10]}"
        self.keep = keep
        self._moto: MotoKms | None = None
        self._openbao: OpenBao | None = None
        self._runtime: Runtime | None = None
        self._tenants = 0
        self._aws_runtime: Runtime | None = None
        self._aws_count = 0
        self.redis_ok = _answers(redis_url)

    # -- settings ------------------------------------------------------------------------

    def overrides(self, **extra: Any) -> dict[str, Any]:
        """Settings of this run: local provider, SQLite in the work dir, Redis DB 8 + prefix."""
        values: dict[str, Any] = {
            "environment": "development",
            "kms_provider": "local",
            "database_url": f"sqlite:///{self.workdir / 'keys.db'}",
            "local_master_key_file": self.workdir / "master.key",
            "dead_letter_key_file": self.workdir / "deadletter.key",
            "data_dir": self.workdir,
            "redis_url": self.redis_url,
            "broker_url": self.redis_url,
            "result_backend": self.redis_url,
            "redis_prefix": self.prefix,
            "embedded_redis": False,
        }
        values.update(extra)
        return values

    def settings(self, **extra: Any) -> Settings:
        return load_settings(**self.overrides(**extra))

    def child_env(self, **extra: Any) -> dict[str, str]:
        """Environment of a worker subprocess: these settings as ``TENANTKEYS_*`` variables."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        for name, value in self.overrides(**extra).items():
            env[ENV_PREFIX + name.upper()] = str(value)
        env["PYTHONPATH"] = os.pathsep.join(
            [REPO_ROOT.as_posix(), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        return env

    @property
    def runtime(self) -> Runtime:
        """The run's shared runtime (creates tenants; local provider; L2 when Redis answers)."""
        if self._runtime is None:
            self._runtime = build_runtime(self.settings())
        return self._runtime

    def tenants(self, count: int) -> list[str]:
        """Tenant ids ``bench-00000`` ... with a signing key each (created on first need)."""
        service = self.runtime.service
        for index in range(self._tenants, count):
            service.create_keys(tenant_name(index), ["signing"])
        self._tenants = max(self._tenants, count)
        return [tenant_name(i) for i in range(count)]

    # -- KMS servers ---------------------------------------------------------------------

    def moto(self) -> MotoKms:
        """A running moto KMS server (started on first use); sets test AWS credentials."""
        if self._moto is None:
            from tenantkeys.testing.moto_kms import MotoKms

            os.environ.update(AWS_TEST_CREDENTIALS)
            os.environ.pop("AWS_PROFILE", None)
            server = MotoKms(str(self.workdir / "moto.log"))
            server.start()
            self._moto = server
        return self._moto

    def openbao(self) -> OpenBao | None:
        """A running OpenBao dev server with Transit enabled, or None if ``bao`` is missing."""
        if self._openbao is None:
            from tenantkeys.testing.openbao import OpenBao, find_bao

            binary = find_bao()
            if binary is None:
                return None
            server = OpenBao(binary, str(self.workdir / "bao.log"))
            server.start()
            self._openbao = server
        return self._openbao

    def aws_settings(self) -> Settings:
        """Settings of the ``aws`` provider on moto: own SQLite file and Redis prefix."""
        server = self.moto()
        return self.settings(
            kms_provider="aws",
            aws_kms_key_id=server.key_id,
            aws_region="us-east-1",
            aws_endpoint_url=server.endpoint,
            database_url=f"sqlite:///{self.workdir / 'keys-aws.db'}",
            # Another prefix: L2 records name their provider, so the two stores never mix.
            redis_prefix=f"{self.prefix}-aws",
        )

    def aws_tenants(self, count: int) -> list[str]:
        """Tenants whose keys are wrapped by AWS KMS (moto), created on first need."""
        if self._aws_runtime is None:
            self._aws_runtime = build_runtime(self.aws_settings())
        for index in range(self._aws_count, count):
            self._aws_runtime.service.create_keys(tenant_name(index), ["signing"])
        self._aws_count = max(self._aws_count, count)
        return [tenant_name(i) for i in range(count)]

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    # -- cleanup -------------------------------------------------------------------------

    def forget_redis_keys(self) -> int:
        """Delete every Redis key under this run's prefix; returns how many."""
        if not self.redis_ok:
            return 0
        client = self.redis()
        removed = 0
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{self.prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    removed += int(client.delete(*batch))
                    batch.clear()
            if batch:
                removed += int(client.delete(*batch))
        finally:
            client.close()
        return removed

    def close(self) -> None:
        for runtime in (self._runtime, self._aws_runtime):
            if runtime is not None:
                runtime.close()
        self._runtime = self._aws_runtime = None
        for server in (self._moto, self._openbao):
            if server is not None:
                server.stop()
        self._moto = self._openbao = None
        self.forget_redis_keys()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
