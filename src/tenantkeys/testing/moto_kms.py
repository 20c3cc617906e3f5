"""moto's server as a loopback AWS KMS: start, stop and restart it on one port.

moto keeps its state in memory, so :meth:`MotoKms.start` (re)creates the symmetric key and two
IAM users every time: ``admin`` (``kms:*``) and ``limited`` (only ``kms:DescribeKey``).
IAM is not enforced until :meth:`MotoKms.enforce_iam` turns it on through moto's
``/moto-api/reset-auth`` (body: the number of requests still let through, ``inf`` = off).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import boto3

from tenantkeys.testing import free_port

REGION = "us-east-1"
#: What moto accepts while IAM is not enforced.
ROOT_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str


class MotoKms:
    """A ``python -m moto.server`` subprocess; ``endpoint`` and ``key_id`` are ready after start."""

    def __init__(self, log_path: str) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.key_id = ""
        self.admin = AccessKey("", "")
        self.limited = AccessKey("", "")

    def start(self) -> None:
        """Start the server (same port as before) and create the key and the IAM users."""
        # moto 5 ignores MOTO_ENABLE_IAM_ACCESS_CONTROL; IAM is toggled via reset-auth instead.
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "inf"}
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self._wait_ready()
        self._post_auth("inf")
        kms = self.client("kms")
        self.key_id = kms.create_key(Description="tenantkeys contract tests")["KeyMetadata"][
            "KeyId"
        ]
        self.admin = self._user("admin", ["kms:*"])
        self.limited = self._user("limited", ["kms:DescribeKey"])

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

    def client(self, service: Literal["kms", "iam"]) -> Any:
        """A boto3 client with root credentials (only useful while IAM is not enforced)."""
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id=ROOT_CREDENTIALS["aws_access_key_id"],
            aws_secret_access_key=ROOT_CREDENTIALS["aws_secret_access_key"],
        )

    @contextmanager
    def enforce_iam(self) -> Iterator[None]:
        """IAM on for the block: only the ``admin`` and ``limited`` users' keys are accepted."""
        self._post_auth("0")
        try:
            yield
        finally:
            if self.running:
                self._post_auth("inf")

    def _user(self, name: str, actions: list[str]) -> AccessKey:
        iam = self.client("iam")
        iam.create_user(UserName=name)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
        }
        iam.put_user_policy(UserName=name, PolicyName="kms", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return AccessKey(key["AccessKeyId"], key["SecretAccessKey"])

    def _post_auth(self, value: str) -> None:
        # S310: every URL here is http://127.0.0.1:PORT, built by this class.
        request = urllib.request.Request(  # noqa: S310
            f"{self.endpoint}/moto-api/reset-auth",
            data=value.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # moto reads the raw body as a number
        )
        with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310
            reply.read()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"moto server exited; see {self._log_path}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):  # noqa: S310
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer within {timeout}s; see {self._log_path}")


@contextmanager
def moto_kms_server(log_path: str) -> Iterator[MotoKms]:
    """A running moto KMS for the block, stopped afterwards."""
    server = MotoKms(log_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
