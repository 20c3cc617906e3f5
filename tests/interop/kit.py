"""The verification snippets of docs/verifying.md (``<!-- kit: NAME -->``), as written there."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "verifying.md"
SNIPPET = re.compile(r"<!-- kit: (?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)\n```", re.S)
PYTHON_KITS = ("python-joserfc", "python-pyjwt", "python-jwcrypto")
NODE_KITS = ("node-jose",)

#: ``verify(jwks, jws, payload, tenant)``: the bytes the signature covers, or an exception.
Verify = Callable[[dict[str, Any], str, bytes, str], bytes]


def snippets() -> dict[str, str]:
    """Every kit snippet's code by name; fails when one the tests run is missing."""
    found = {m["name"]: m["code"] for m in SNIPPET.finditer(DOC.read_text())}
    missing = set(PYTHON_KITS + NODE_KITS) - set(found)
    assert not missing, f"{DOC} lacks the kit snippets {sorted(missing)}"
    return found


def python_verifiers() -> dict[str, Verify]:
    """Each Python snippet's ``verify``, compiled from the page."""
    code = snippets()
    verifiers = {}
    for name in PYTHON_KITS:
        namespace: dict[str, Any] = {}
        exec(compile(code[name], f"docs/verifying.md ({name})", "exec"), namespace)
        verifiers[name] = namespace["verify"]
    return verifiers
