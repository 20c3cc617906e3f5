"""Node for the interop tests: ``node`` 20+ and the packages of tests/interop/node.

The install is cached by lock (:func:`tests.node.install`); no Node is a missing service.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.node import Node, install

__all__ = ["Node", "node"]

PROJECT = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="session")
def node() -> Node:
    """The docs' Node snippets' runtime: jose and an independent RFC 8785 implementation."""
    return install(PROJECT)
