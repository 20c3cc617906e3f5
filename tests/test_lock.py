"""uv.lock matches pyproject.toml, and every install path installs from it.

Two checks of the match, each of which fails on its own: the requirements uv.lock recorded
for tenantkeys (its ``requires-dist``) against the ones pyproject.toml declares, read here with
``packaging`` (a readable diff, no uv needed); and uv's own ``uv lock --check``, through
``scripts/lock --check`` (offline: the lock and pyproject.toml are all it reads). After a change
to the dependencies, ``scripts/lock`` brings the lock back in step (docs/development.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "tenantkeys"
#: One requirement: name, extras, version specifier, marker; each normalised.
Entry = tuple[str, frozenset[str], str, str]


def declared(pyproject: dict[str, object]) -> set[Entry]:
    """The requirements pyproject.toml declares, dependencies and every extra."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    entries = {_entry(Requirement(line), "") for line in project["dependencies"]}
    for extra, lines in project["optional-dependencies"].items():
        entries |= {_entry(Requirement(line), f"extra == '{extra}'") for line in lines}
    return entries


def locked(lock: dict[str, object]) -> set[Entry]:
    """The requirements of tenantkeys as uv.lock recorded them when it resolved."""
    packages = lock["package"]
    assert isinstance(packages, list)
    ours = next(p for p in packages if p["name"] == PROJECT)
    return {
        (
            canonicalize_name(r["name"]),
            frozenset(r.get("extras", ())),
            str(SpecifierSet(r.get("specifier", ""))),
            r.get("marker", ""),
        )
        for r in ours["metadata"]["requires-dist"]
    }


def _entry(requirement: Requirement, extra_marker: str) -> Entry:
    own = str(requirement.marker) if requirement.marker else ""
    marker = " and ".join(m for m in (own, extra_marker) if m)
    return (
        canonicalize_name(requirement.name),
        frozenset(requirement.extras),
        str(requirement.specifier),
        marker,
    )


def mismatch(pyproject_text: str, lock_text: str) -> str:
    """'' when the lock records exactly pyproject's requirements, else what differs."""
    want, have = declared(tomllib.loads(pyproject_text)), locked(tomllib.loads(lock_text))
    lines = [f"pyproject.toml, not uv.lock: {e}" for e in sorted(want - have, key=str)]
    lines += [f"uv.lock, not pyproject.toml: {e}" for e in sorted(have - want, key=str)]
    return "\n".join(lines)


def uv_lock_check(project: Path) -> subprocess.CompletedProcess[str]:
    """``scripts/lock --check`` of this repository, run on ``project``'s files."""
    return subprocess.run(
        [str(ROOT / "scripts" / "lock"), "--check", "--directory", str(project)],
        capture_output=True,
        text=True,
        timeout=300,  # the first run installs the pinned uv into .venv
        check=False,
    )


def with_one_more_dependency(text: str) -> str:
    changed = text.replace('"pyyaml>=6",', '"pyyaml>=6",\n  "tomli-w>=1",', 1)
    assert changed != text, "pyproject.toml no longer lists pyyaml in dev"
    return changed


def test_the_lock_records_exactly_what_pyproject_declares() -> None:
    found = mismatch((ROOT / "pyproject.toml").read_text(), (ROOT / "uv.lock").read_text())
    assert not found, f"uv.lock is out of date; run scripts/lock:\n{found}"


def test_a_dependency_added_without_relocking_is_caught(tmp_path: Path) -> None:
    pyproject = with_one_more_dependency((ROOT / "pyproject.toml").read_text())
    lock = (ROOT / "uv.lock").read_text()
    assert "tomli-w" in mismatch(pyproject, lock)

    (tmp_path / "pyproject.toml").write_text(pyproject)
    (tmp_path / "uv.lock").write_text(lock)
    assert uv_lock_check(tmp_path).returncode != 0


def test_uv_agrees_the_lock_is_current(tmp_path: Path) -> None:
    # A copy, so that uv can never rewrite the repository's lock.
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(ROOT / name, tmp_path / name)
    done = uv_lock_check(tmp_path)
    assert done.returncode == 0, f"uv lock --check failed; run scripts/lock:\n{done.stderr}"
    assert (tmp_path / "uv.lock").read_bytes() == (ROOT / "uv.lock").read_bytes()


def test_uv_is_pinned_once() -> None:
    pin = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["required-version"]
    assert re.fullmatch(r"==\d+\.\d+\.\d+", pin), "pin uv exactly: the lock's installer"
    for path in ("scripts/bootstrap", "scripts/lock", "deploy/docker/Dockerfile"):
        assert pin.lstrip("=") not in (ROOT / path).read_text(), f"{path} repeats the uv pin"


@pytest.mark.parametrize(
    ("path", "installs_locked"),
    [
        ("scripts/bootstrap", "uv sync --locked"),  # scripts/run, scripts/test, so .ci/run
        ("deploy/docker/Dockerfile", "uv sync --locked"),
    ],
)
def test_every_install_is_from_the_lock(path: str, installs_locked: str) -> None:
    text = (ROOT / path).read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert installs_locked in code
    assert "pip install -e" not in code and 'pip install ".' not in code, f"{path} resolves anew"


def test_ci_and_run_go_through_bootstrap() -> None:
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
    assert "scripts/bootstrap dev" in (ROOT / "scripts" / "test").read_text()
    assert "scripts/bootstrap all" in (ROOT / "scripts" / "run").read_text()
