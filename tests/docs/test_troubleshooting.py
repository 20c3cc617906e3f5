"""docs/setup/KMS_TROUBLESHOOTING.md against :class:`tenantkeys.errors.ErrorCode`, both ways.

ErrorCode is read when the test runs, so a code added anywhere fails here until it has a
section. Section headings are the code itself (``## TK-KMS-ACCESS-DENIED``), so the GitHub
anchor is ``code.lower()`` — exactly what :func:`tenantkeys.errors.doc_link` links to.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tenantkeys.errors import DOCS_PAGE, ErrorCode, doc_link
from tests.docs import markdown

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / DOCS_PAGE
PARTS = ("Symptom", "Cause", "Fix", "Verify")
MOST_LIKELY = 10


def page() -> str:
    return PAGE.read_text()


def code_sections() -> dict[str, str]:
    return {k: v for k, v in markdown.sections(page()).items() if k.startswith("TK-")}


def test_every_error_code_has_a_section() -> None:
    missing = [code.value for code in ErrorCode if code.value not in code_sections()]
    assert not missing, f"{DOCS_PAGE} has no section for: {missing}"


def test_every_section_names_a_real_error_code() -> None:
    known = {code.value for code in ErrorCode}
    headings = [title for level, title in markdown.headings(page()) if title.startswith("TK-")]
    unknown = [title for title in headings if title not in known]
    assert not unknown, f"sections for codes the code cannot emit: {unknown}"
    assert all(level == 2 for level, title in markdown.headings(page()) if title.startswith("TK-"))
    assert len(headings) == len(set(headings)), "a code has two sections"


def test_doc_link_resolves_to_the_section() -> None:
    anchors = markdown.anchors(page())
    for code in ErrorCode:
        path, _, anchor = doc_link(code).partition("#")
        assert path == DOCS_PAGE
        assert anchor in anchors, f"{doc_link(code)} has no matching heading"


def test_every_section_has_symptom_cause_fix_and_verify() -> None:
    for code, body in code_sections().items():
        for part in PARTS:
            assert re.search(rf"\*\*{part}\b", body), f"{code}: no **{part}.** paragraph"


def test_the_most_likely_list_links_existing_sections() -> None:
    body = page().split("## The ten most likely", 1)[1].split("\n---", 1)[0]
    listed = re.findall(r"\]\(#(tk-[a-z0-9-]+)\)", body)
    assert len(listed) >= MOST_LIKELY
    assert set(listed) <= {code.value.lower() for code in ErrorCode}
