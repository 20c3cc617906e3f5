"""Fixtures that start KMS servers on free loopback ports (moto, OpenBao, GCP and Azure stand-ins).

Each server module in this package exposes a context manager; the fixtures here wrap them.
"""

from __future__ import annotations
