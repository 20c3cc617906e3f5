"""Links in the docs resolve: relative files exist, anchors match a heading.

Also checks the other direction that matters: every ``docs/...md#anchor`` the *code* prints in
an error message (providers' POLICY_DOC, config's SETUP_DOCS, errors.DOCS_PAGE) exists, and
every metric name the docs quote is one tenantkeys exports.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs import markdown

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
OWN = markdown.own_pages(DOCS)
CODE_DOC_REF = re.compile(r"(docs/[A-Za-z0-9_./-]+\.md)(?:#([a-z0-9-]+))?")
METRIC = re.compile(r"\btenantkeys_[a-z0-9_]+")


def resolve(source: Path, target: str) -> tuple[Path, str]:
    path, _, anchor = target.partition("#")
    return ((source.parent / path).resolve() if path else source), anchor


@pytest.mark.parametrize("page", OWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    for target in markdown.links(page.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # external (https:, mailto:)
        path, anchor = resolve(page, target)
        assert path.exists(), f"{page.name}: broken link {target}"
        if anchor and path.suffix == ".md":
            assert anchor in markdown.anchors(path.read_text()), (
                f"{page.name}: no #{anchor} in {path.name}"
            )


def test_doc_references_in_the_code_exist() -> None:
    refs: set[tuple[str, str]] = set()
    for source in [*ROOT.joinpath("src").rglob("*.py"), *ROOT.joinpath("workers").rglob("*.py")]:
        refs |= {(m.group(1), m.group(2) or "") for m in CODE_DOC_REF.finditer(source.read_text())}
    assert ("docs/setup/AWS_KMS_SETUP.md", "iam-policy") in refs  # the scan does find them
    # Pages the code sends operators to: docs/setup/ (error messages, start-up failures) and
    # any anchored link. Generated pages of other parts (docs/performance.md, written by
    # `tenantkeys bench`) are theirs to create.
    refs = {(path, anchor) for path, anchor in refs if anchor or path.startswith("docs/setup/")}
    for path, anchor in sorted(refs):
        page = ROOT / path
        assert page.is_file(), f"code refers to missing {path}"
        if anchor:
            assert anchor in markdown.anchors(page.read_text()), f"code refers to {path}#{anchor}"


def exported_names() -> set[str]:
    """Sample names tenantkeys exports (as tests/integration/test_alert_rules.py counts them)."""
    from tenantkeys import telemetry

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    names = set(telemetry.STATE_GAUGES)
    for metric in telemetry.METRICS:
        for family in metric.describe():
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_quoted_metrics_are_exported() -> None:
    names = exported_names()
    for page in OWN:
        for found in METRIC.findall(page.read_text()):
            assert found in names, f"{page.name} quotes {found}, which tenantkeys does not export"
