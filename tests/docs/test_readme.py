"""The README's configuration table names every setting, and only real ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tenantkeys.keys.kms import setting_variables

pytestmark = pytest.mark.unit
README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = sorted(v for v in setting_variables() if f"`{v}`" not in README)
    assert not missing, f"README configuration table lacks {missing}"


def test_every_variable_in_the_readme_is_a_setting() -> None:
    named = set(re.findall(r"`(TENANTKEYS_[A-Z0-9_]+)`", README))
    assert named - setting_variables() == set()


def test_the_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```", 2)[1]
    assert "scripts/run" in first_block and "scripts/test" in first_block
    assert "scripts/test" in (Path(__file__).parents[2] / ".ci" / "run").read_text()
