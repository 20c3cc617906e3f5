"""The tests' Node projects (tests/interop/node, tests/producers/node): ``npm ci``, cached.

:func:`install` puts a project's locked packages in
``$XDG_CACHE_HOME/tenantkeys/node/<project>-<hash of package.json and package-lock.json>`` (or
under ``TK_NODE_DIR``), so a second run needs no network; a fresh CI machine installs from the
npm registry. The project's ``*.mjs`` scripts are copied beside the packages on every call. No
Node 20+ is a missing service: skipped locally, a failure under ``CI=true``.
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


def install_dir(project: Path) -> Path:
    """Where ``project`` is installed: one directory per content of its manifest and lock."""
    lock = (project / "package-lock.json").read_bytes() + (project / "package.json").read_bytes()
    base = os.environ.get("TK_NODE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "tenantkeys", "node"
    )
    name = f"{project.parent.name}-{hashlib.sha256(lock).hexdigest()[:16]}"
    return Path(base) / name


def _node_binaries() -> tuple[str, str]:
    binary, npm = shutil.which("node"), shutil.which("npm")
    if binary is None or npm is None:
        service_missing("Node.js and npm")
    assert binary is not None and npm is not None
    major = subprocess.run(
        [binary, "-p", "process.versions.node.split('.')[0]"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if int(major) < NODE_MAJOR:
        service_missing(f"Node.js {NODE_MAJOR}+ (found {major})")
    return binary, npm


def install(project: Path) -> Node:
    """Node with ``project``'s locked packages (``npm ci``, once per lock) and its scripts."""
    binary, npm = _node_binaries()
    root = install_dir(project)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".install.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # two sessions at once install once
        if not (root / "node_modules" / ".package-lock.json").exists():
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(project / name, root / name)
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
    for script in project.glob("*.mjs"):  # always the checkout's scripts, next to node_modules
        shutil.copyfile(script, root / script.name)
    return Node(binary, root)
