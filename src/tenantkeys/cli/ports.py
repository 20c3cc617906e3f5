"""The ports our processes listen on, checked before they start; a busy one is TK-PORT-IN-USE.

Every port has an owner and the setting or option that moves it, so the one coded line says
both what failed and what to change.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tenantkeys.cli.probes import port_bound
from tenantkeys.config import ENV_PREFIX
from tenantkeys.errors import ConfigurationError, ErrorCode

LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class Port:
    """A TCP port one of our processes listens on, and how an operator chooses another.

    ``setting`` is the option or variable to change, with ``P`` standing for the new port.
    """

    number: int
    owner: str
    setting: str
    host: str = LOCALHOST

    def in_use(self) -> ConfigurationError:
        """The error for this port being held by another process."""
        return ConfigurationError(
            f"port {self.number} on {self.host} is in use, so {self.owner} cannot listen on "
            f"it: stop what holds it, or choose another port: {self.setting}",
            code=ErrorCode.PORT_IN_USE,
        )


def flower(number: int, address: str = LOCALHOST, *, in_dev: bool = False) -> Port:
    """Flower's port: ``tenantkeys flower --port``, ``tenantkeys dev --flower-port``."""
    setting = (
        "tenantkeys dev --flower-port P (or --no-flower)"
        if in_dev
        else "tenantkeys flower --port P (tenantkeys dev --flower-port P when dev starts it)"
    )
    return Port(number, "Flower", setting, address)


def worker_metrics(number: int) -> Port:
    """The worker's ``/metrics`` port (it binds every address)."""
    return Port(
        number,
        "the worker's metrics exporter",
        f"{ENV_PREFIX}WORKER_METRICS_PORT=P (0 turns the exporter off)",
        "0.0.0.0",  # noqa: S104 - where the exporter binds, so where it would collide
    )


def bundled_redis(number: int) -> Port:
    """The port of the bundled Redis: the one in the configured Redis URL."""
    return Port(number, "the bundled Redis", f"{ENV_PREFIX}REDIS_URL=redis://127.0.0.1:P/0")


def ops_api(number: int, host: str) -> Port:
    """The ops API's port."""
    return Port(number, "the ops API", "tenantkeys api --port P", host)


def require_free(*ports: Port) -> None:
    """Raise TK-PORT-IN-USE for the first of ``ports`` that something else holds."""
    for port in ports:
        if port_bound(port.host, port.number):
            raise port.in_use()


@contextmanager
def bind_errors(port: Port) -> Iterator[None]:
    """Map a failure to bind ``port`` (EADDRINUSE) inside the block to TK-PORT-IN-USE.

    The check before starting leaves a window; a bind that loses the race is still named.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise port.in_use() from exc
