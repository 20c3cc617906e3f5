"""Terraform parsed with python-hcl2, normalised to plain Python values.

python-hcl2 keeps the quotes of string literals (``'"kms:Decrypt"'``) and adds bookkeeping
keys (``__is_block__``, ``__comments__``); :func:`load` removes both, so a test reads
``statement["actions"] == ["kms:Decrypt", ...]`` and block labels as plain dict keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hcl2

_META = {"__is_block__", "__comments__", "__inline_comments__", "__start_line__", "__end_line__"}


def unquote(value: Any) -> Any:
    """Strip literal quotes from every string and bookkeeping keys from every mapping."""
    if isinstance(value, str):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            return value[1:-1]
        return value
    if isinstance(value, list):
        return [unquote(item) for item in value]
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if k not in _META}
    return value


def load(path: Path) -> dict[str, Any]:
    """One .tf file as normalised dicts and lists."""
    with path.open() as handle:
        parsed: dict[str, Any] = unquote(hcl2.load(handle))
    return parsed


def load_module(directory: Path) -> dict[str, list[Any]]:
    """Every .tf file of a module, the top-level block lists concatenated."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        for kind, blocks in load(path).items():
            merged.setdefault(kind, []).extend(blocks)
    return merged


def blocks(module: dict[str, list[Any]], kind: str, type_name: str) -> dict[str, dict[str, Any]]:
    """``{name: body}`` of every ``kind "type_name" "name" { ... }`` (kind: resource or data)."""
    found: dict[str, dict[str, Any]] = {}
    for entry in module.get(kind, []):
        for name, body in entry.get(type_name, {}).items():
            found[name] = body
    return found


def one(module: dict[str, list[Any]], kind: str, type_name: str) -> dict[str, Any]:
    """The single ``kind "type_name"`` block of the module (asserts there is exactly one)."""
    found = blocks(module, kind, type_name)
    assert len(found) == 1, f"expected one {kind} {type_name!r}, found {sorted(found)}"
    return next(iter(found.values()))
