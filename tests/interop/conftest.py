"""Node for the interop tests: ``node`` 20+ and ``npm ci`` of tests/interop/node, cached by lock.

The install goes to ``$XDG_CACHE_HOME/tenantkeys/interop-node/<hash of the lock file>`` (or
``TK_INTEROP_NODE_DIR``), so a second run needs no network; a fresh CI machine installs from the
npm registry. No Node is a missing service: skipped locally, a failure under ``CI=true``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import service_missing

PROJECT = Path(__file__).resolve().parent / "node"
NODE_MAJOR = 20


@dataclass(frozen=True)
class Node:
    """A ``node`` binary and a directory holding the installed packages and the scripts."""

    binary: str
    root: Path

    def run(self, script: str, *args: str, stdin: str = "", timeout: float = 120) -> str:
        done = subprocess.run(
            [self.binary, str(self.root / script), *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.root,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"node {script} failed:\n{done.stderr[-2000:]}"
        return done.stdout

    def version(self, package: str) -> str:
        manifest = self.root / "node_modules" / package / "package.json"
        return str(json.loads(manifest.read_text())["version"])


def _install_dir() -> Path:
    lock = (PROJECT / "package-lock.json").read_bytes() + (PROJECT / "package.json").read_bytes()
    base = os.environ.get("TK_INTEROP_NODE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "tenantkeys", "interop-node"
    )
    return Path(base) / hashlib.sha256(lock).hexdigest()[:16]


@pytest.fixture(scope="session")
def node() -> Node:
    binary, npm = shutil.which("node"), shutil.which("npm")
    if binary is None or npm is None:
        service_missing("Node.js and npm (the interop tests run the docs' Node snippets)")
    assert binary is not None and npm is not None
    major = subprocess.run(
        [binary, "-p", "process.versions.node.split('.')[0]"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if int(major) < NODE_MAJOR:
        service_missing(f"Node.js {NODE_MAJOR}+ (found {major})")
    root = _install_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".install.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # two sessions at once install once
        if not (root / "node_modules" / ".package-lock.json").exists():
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(PROJECT / name, root / name)
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if done.returncode != 0:
                pytest.fail(f"npm ci in {root} failed:\n{done.stderr[-2000:]}", pytrace=False)
    for script in PROJECT.glob("*.mjs"):  # always the checkout's scripts, next to node_modules
        shutil.copyfile(script, root / script.name)
    return Node(binary, root)
