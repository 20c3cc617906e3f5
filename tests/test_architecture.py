"""The picture of the house holds: import-linter checks the contracts in ``.importlinter``.

The design draws the layers (faces > admin, jobs, queue > keys, telemetry, resilience >
providers, signing > config > errors) and the fences (only ``queue/`` and ``workers/`` touch
Celery; providers import only errors and their base; nothing shipped imports ``tests/``;
``tenantkeys.testing`` is for tests and bench only). A broken contract fails here with
lint-imports' own report, which names every import chain.

``lint-imports`` loads :class:`ProtectedExternalSubmodules` from this module (``contract_types``
in ``.importlinter``).
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from grimp import ImportGraph
from importlinter import Contract, ContractCheck, fields, output

pytestmark = pytest.mark.lint
ROOT = Path(__file__).parents[1]
CONFIG = ROOT / ".importlinter"


def lint_imports(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which(
        "lint-imports"
    )
    if found is None:
        pytest.fail("lint-imports is not installed (import-linter is in the [dev] extra)")
    return subprocess.run(
        [found, "--no-logo", "--no-cache", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_import_contracts_hold() -> None:
    done = lint_imports(str(CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr


#: One forbidden arrow per kind of contract: a stock one and ours.
ARROWS = [
    pytest.param(
        "providers-import-only-errors",
        "providers/_arrow.py",
        "from tenantkeys.keys import model\n",
        "tenantkeys.providers._arrow -> tenantkeys.keys.model",
        id="provider-imports-keys",
    ),
    pytest.param(
        "celery-instrumentation-only-in-queue",
        "telemetry/_arrow.py",
        "from opentelemetry.instrumentation.celery import CeleryInstrumentor\n",
        "tenantkeys.telemetry._arrow -> opentelemetry.instrumentation.celery",
        id="telemetry-instruments-celery",
    ),
]


@pytest.mark.parametrize(("contract", "module", "source", "chain"), ARROWS)
def test_a_forbidden_arrow_breaks_its_contract(
    tmp_path: Path, contract: str, module: str, source: str, chain: str
) -> None:
    """The contract as written in ``.importlinter``, over a copy of the package plus one arrow."""
    shutil.copytree(
        ROOT / "src" / "tenantkeys",
        tmp_path / "tenantkeys",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    config = _one_contract_config(contract, tmp_path / "contracts.ini")
    # The copy is found first (lint-imports puts its working directory at the head of sys.path);
    # PYTHONPATH only lets it load our contract type from tests/.
    kept = lint_imports(str(config), cwd=tmp_path, PYTHONPATH=str(ROOT))
    assert kept.returncode == 0, kept.stdout + kept.stderr

    (tmp_path / "tenantkeys" / module).write_text(source)
    broken = lint_imports(str(config), cwd=tmp_path, PYTHONPATH=str(ROOT))

    assert broken.returncode != 0, broken.stdout + broken.stderr
    name = _contracts()[f"importlinter:contract:{contract}"]["name"]
    assert f"{name} BROKEN" in broken.stdout, broken.stdout
    assert chain in broken.stdout, broken.stdout


def _contracts() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    return parser


def _one_contract_config(contract: str, path: Path) -> Path:
    """``.importlinter`` cut down to one contract over ``tenantkeys`` alone."""
    parser = _contracts()
    for section in parser.sections():
        if section not in ("importlinter", f"importlinter:contract:{contract}"):
            parser.remove_section(section)
    parser["importlinter"]["root_packages"] = "\ntenantkeys"
    with path.open("w") as file:
        parser.write(file)
    return path


class ProtectedExternalSubmodules(Contract):
    """Only ``allowed_importers`` import the given sub-packages of external packages.

    import-linter squashes an external package to its top name (``opentelemetry``), so the
    stock ``protected`` contract cannot tell ``opentelemetry.instrumentation.celery`` (which
    imports celery) from ``opentelemetry.trace``. This contract reads the import statements
    behind each import of the top name instead. Needs ``include_external_packages = True``.
    """

    protected_modules = fields.ListField(subfield=fields.StringField())
    allowed_importers = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        allowed: list[str] = self.allowed_importers  # type: ignore[assignment]
        illegal: list[tuple[str, str, int]] = []
        for protected in self.protected_modules:  # type: ignore[attr-defined]
            top = protected.split(".")[0]
            if top not in graph.modules:
                continue
            for importer in sorted(graph.find_modules_that_directly_import(top)):
                if any(importer == a or importer.startswith(f"{a}.") for a in allowed):
                    continue
                for detail in graph.get_import_details(importer=importer, imported=top):
                    if any(
                        name == protected or name.startswith(f"{protected}.")
                        for name in _imported_names(detail["line_contents"])
                    ):
                        illegal.append((importer, protected, detail["line_number"]))
        return ContractCheck(kept=not illegal, metadata={"illegal": illegal})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for importer, protected, line in check.metadata["illegal"]:
            output.print_error(f"- {importer} -> {protected} (l.{line})", bold=False)
            output.new_line()


def _imported_names(line: str) -> list[str]:
    """Dotted names an import line reaches: ``from a.b import c`` gives ``a.b`` and ``a.b.c``."""
    try:
        tree = ast.parse(line.strip())
    except SyntaxError:  # the first line of a parenthesised import: keep its module
        match = re.match(r"\s*(?:from|import)\s+([\w.]+)", line)
        return [match.group(1)] if match else []
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names
