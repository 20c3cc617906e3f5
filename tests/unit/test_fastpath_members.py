"""The fence of ``workers.fastpath``: every private library member it relies on still exists.

An upgrade of kombu, Celery, celery-batches or redis-py that removes or renames one fails here,
naming the member and the module of ours that relies on it, instead of failing in a worker.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
import tomllib
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import pytest

import workers.fastpath as fastpath

pytestmark = pytest.mark.unit

#: Top-level module -> its distribution on PyPI.
_DISTRIBUTIONS = {
    "celery": "celery",
    "kombu": "kombu",
    "celery_batches": "celery-batches",
    "redis": "redis",
}


def _assigned_in(cls: type, name: str) -> bool:
    """True when a method of ``cls`` assigns ``self.<name>`` (an instance attribute)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return False
    return any(
        isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and node.attr == name
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        for node in ast.walk(ast.parse(source))
    )


def _resolves(member: str) -> bool:
    """``module:Class.member`` (or ``module:function``) exists on the installed library.

    A class member counts when the class or a base defines it (method, property, slot, class
    attribute) or a method of theirs assigns it to ``self`` (an instance attribute).
    """
    module_name, _, path = member.partition(":")
    try:
        owner: object = importlib.import_module(module_name)
    except ImportError:
        return False
    *owners, name = path.split(".")
    for part in owners:
        if not hasattr(owner, part):
            return False
        owner = getattr(owner, part)
    if hasattr(owner, name):
        return True
    return isinstance(owner, type) and any(
        _assigned_in(cls, name) for cls in owner.__mro__ if cls is not object
    )


def _version(member: str) -> str:
    distribution = _DISTRIBUTIONS.get(member.split(".", 1)[0].split(":", 1)[0], "?")
    try:
        return f"{distribution} {metadata.version(distribution)}"
    except metadata.PackageNotFoundError:
        return f"{distribution} (not installed)"


def missing_members(table: Mapping[str, tuple[str, ...]]) -> list[str]:
    """One message per member of ``table`` that no longer resolves."""
    return [
        f"{member} is gone from the installed {_version(member)}, and {ours} relies on it: "
        f"re-check {ours} against this version (workers/fastpath/__init__.py lists what each "
        f"module uses), or pin the version it was checked against "
        f"({dict(fastpath.CHECKED_AGAINST)})"
        for ours, members in table.items()
        for member in members
        if not _resolves(member)
    ]


def check(table: Mapping[str, tuple[str, ...]]) -> None:
    """Fail, naming every member of ``table`` that is gone and the module relying on it."""
    problems = missing_members(table)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.mark.parametrize("ours", sorted(fastpath.PRIVATE_MEMBERS))
def test_every_private_member_still_exists(ours: str) -> None:
    check({ours: fastpath.PRIVATE_MEMBERS[ours]})


def test_the_check_fails_naming_a_missing_member_and_who_relies_on_it() -> None:
    fake = {
        "workers.fastpath.transport": (
            "kombu.transport.redis:Channel._brpop_read",  # there
            "kombu.transport.redis:Channel._no_such_member",
            "kombu.transport.redis:NoSuchClass.member",
            "kombu.no_such_module:Channel.member",
        ),
        "workers.fastpath.batches": ("celery_batches.trace:no_such_function",),
    }
    with pytest.raises(pytest.fail.Exception) as failed:
        check(fake)
    problems = str(failed.value).splitlines()
    assert len(problems) == 4
    assert problems[0].startswith(
        "kombu.transport.redis:Channel._no_such_member is gone from the installed kombu "
        f"{metadata.version('kombu')}, and workers.fastpath.transport relies on it"
    )
    assert problems[3].startswith(
        "celery_batches.trace:no_such_function is gone from the installed celery-batches "
        f"{metadata.version('celery-batches')}, and workers.fastpath.batches relies on it"
    )


def test_instance_attributes_resolve_and_misspelt_ones_do_not() -> None:
    # Assigned in __init__ only, so invisible to hasattr on the class.
    assert _resolves("celery_batches:Batches._tref")
    assert _resolves("kombu.transport.redis:Channel._queue_cycle")
    assert not _resolves("celery_batches:Batches._tref_")


def test_the_docstring_names_every_member_of_the_table() -> None:
    doc = fastpath.__doc__ or ""
    unnamed = [
        member
        for members in fastpath.PRIVATE_MEMBERS.values()
        for member in members
        if member.partition(":")[2] not in doc
    ]
    assert unnamed == [], "workers/fastpath/__init__.py's docstring must name each member"


def test_the_pins_are_the_minor_versions_the_fence_was_checked_against() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    pins = {
        re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0]: spec
        for spec in pyproject["project"]["dependencies"]
    }
    for distribution in ("celery", "kombu", "celery-batches"):
        checked = fastpath.CHECKED_AGAINST[distribution]
        major, minor = checked.split(".")[:2]
        assert pins[distribution] == (f"{distribution}>={checked},<{major}.{int(minor) + 1}"), (
            f"pin {distribution} to the minor version the fence was checked against"
        )
    for distribution, checked in fastpath.CHECKED_AGAINST.items():
        installed = metadata.version(distribution)
        assert installed.split(".")[:2] == checked.split(".")[:2], (
            f"{distribution} {installed} is installed, the fence was checked against {checked}: "
            "re-check the members workers/fastpath/__init__.py lists, then update CHECKED_AGAINST"
        )
