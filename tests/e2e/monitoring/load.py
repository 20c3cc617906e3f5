"""Signing load from a thread, so Prometheus has something to watch while faults happen."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from tenantkeys.errors import TenantKeysError
from tests.e2e.harness import Deployment


@dataclass
class Load:
    """Signing jobs for ``tenants``, one round at a time, until :meth:`stop`."""

    deployment: Deployment
    tenants: list[str]
    signed: int = 0
    failed: int = 0
    #: TK codes of the failed jobs (dead-lettered during a KMS outage, say).
    errors: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=90)

    def _run(self) -> None:
        with self.deployment.client() as client:
            while not self._stop.is_set():
                for job in client.submit_many((tenant, b"load") for tenant in self.tenants):
                    try:
                        job.result(timeout=60)
                        self.signed += 1
                    except TenantKeysError as exc:
                        self.failed += 1
                        self.errors[str(getattr(exc.code, "value", exc.code))] += 1
                self._stop.wait(0.2)
