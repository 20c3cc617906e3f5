"""The setup guides, the knowledge base and the architecture page against the code.

* the AWS guide's copy-paste policy allows exactly ``KMS_ACTIONS`` and conditions on exactly
  ``CONTEXT_KEYS``; the Vault guide's policy is update/update/read and never ``create``; the
  GCP and Azure guides name the roles and permissions their providers' errors name;
* every ``TENANTKEYS_*`` variable the docs mention is a setting;
* every ``tenantkeys ...`` command the docs show exists, with the options it is given.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import hcl2
import pytest

from tenantkeys.cli import COMMANDS, LazyGroup, cli
from tenantkeys.keys.kms import setting_variables
from tenantkeys.providers.base import CONTEXT_KEYS
from tests.docs import markdown

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "docs" / "setup"
GUIDES = ("AWS_KMS_SETUP.md", "VAULT_SETUP.md", "GCP_KMS_SETUP.md", "AZURE_KEY_VAULT_SETUP.md")
GUIDE_PARTS = ("prerequisites", "create-the-key", "settings", "verify", "common-errors")
OWN = markdown.own_pages(ROOT / "docs")
SETTING = re.compile(r"\bTENANTKEYS_[A-Z0-9_]*[A-Z0-9]\b")
COMMAND = re.compile(r"(?:^|\$ |\.venv/bin/|-- |exec )tenantkeys ((?:[^|;&>)`]|\|\|)*)")
KNOWN_NOT_SETTINGS = {"TENANTKEYS_SERVICE_TOKEN"}  # compose's variable for the OpenBao token


def read(name: str) -> str:
    return (SETUP / name).read_text()


@pytest.mark.parametrize("guide", GUIDES)
def test_guide_has_every_part(guide: str) -> None:
    anchors = markdown.anchors(read(guide))
    for part in GUIDE_PARTS:
        assert part in anchors, f"{guide} has no '{part}' section"
    assert any(a.startswith("test-locally") for a in anchors), f"{guide}: no local testing"


def test_aws_guide_policy_matches_the_code() -> None:
    from tenantkeys.providers.aws import KMS_ACTIONS

    policies = [b.text for b in markdown.blocks(read("AWS_KMS_SETUP.md")) if b.info == "json"]
    assert len(policies) == 1, "the AWS guide has one copy-paste policy"
    statements = json.loads(policies[0])["Statement"]
    actions = []
    for statement in statements:
        assert statement["Effect"] == "Allow"
        listed = statement["Action"]
        actions += [listed] if isinstance(listed, str) else listed
    assert sorted(actions) == sorted(KMS_ACTIONS)
    wrap = next(s for s in statements if "kms:Decrypt" in s["Action"])
    condition = wrap["Condition"]
    keys = condition["ForAllValues:StringEquals"]["kms:EncryptionContextKeys"]
    assert sorted(keys) == sorted(CONTEXT_KEYS)
    required = {
        k.removeprefix("kms:EncryptionContext:")
        for k, v in condition["Null"].items()
        if v == "false"
    }
    assert required == set(CONTEXT_KEYS)


def test_vault_guide_policy_matches_the_provider() -> None:
    policies = [b.text for b in markdown.blocks(read("VAULT_SETUP.md")) if b.info == "hcl"]
    assert len(policies) == 1
    parsed = hcl2.loads(policies[0])
    rules = {
        path.strip('"'): [c.strip('"') for c in body["capabilities"]]
        for entry in parsed["path"]
        for path, body in entry.items()
    }
    assert rules == {
        "transit/encrypt/tenantkeys": ["update"],
        "transit/decrypt/tenantkeys": ["update"],
        "transit/keys/tenantkeys": ["read"],
    }


def test_gcp_and_azure_guides_name_what_the_providers_require() -> None:
    from tenantkeys.providers import azure, gcp

    assert gcp.ROLE in read("GCP_KMS_SETUP.md")
    assert "roles/cloudkms.viewer" in read("GCP_KMS_SETUP.md")  # named in gcp's permission error
    text = read("AZURE_KEY_VAULT_SETUP.md")
    assert azure.ROLE in text
    assert "get wrapKey unwrapKey" in text


@pytest.mark.parametrize("page", OWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_settings_named_in_the_docs_exist(page: Path) -> None:
    fields = set(setting_variables())
    named = set(SETTING.findall(page.read_text())) - KNOWN_NOT_SETTINGS
    assert named <= fields, f"{page.name} names unknown settings: {sorted(named - fields)}"


def code_lines(text: str) -> list[str]:
    """Lines of code blocks (continuations joined) and inline code spans."""
    lines = []
    for block in markdown.blocks(text):
        lines += block.text.replace("\\\n", " ").splitlines()
    lines += re.findall(
        r"`([^`\n]+)`", "\n".join(line for line in text.splitlines() if not line.startswith("    "))
    )
    return lines


def resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The click command named by the leading words, and the remaining words."""
    name = words[0]
    assert name in COMMANDS, f"`tenantkeys {name}` is not a command"
    command = LazyGroup._load(name)
    assert command is not None, f"`tenantkeys {name}`: module {COMMANDS[name]} missing"
    rest = words[1:]
    context = cli.make_context("tenantkeys", [name], resilient_parsing=True)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(context, rest[0])
        if sub is None:
            if "|" in rest[0] or rest[0].isupper():
                break  # a placeholder such as `worker | beat` or `replay ID`
            raise AssertionError(f"`tenantkeys {name} {rest[0]}` does not exist")
        command, rest = sub, rest[1:]
    return command, rest


@pytest.mark.parametrize("page", OWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_shown_in_the_docs_exist(page: Path) -> None:
    for line in code_lines(page.read_text()):
        for match in COMMAND.finditer(line):
            try:
                words = shlex.split(match.group(1), comments=True)
            except ValueError:
                words = match.group(1).split()
            words = [w for w in words if w not in {"(", ")", "[", "]"}]
            if not words or not re.match(r"^[a-z]", words[0]):
                continue
            command, rest = resolve(words)
            options = {opt for param in command.params for opt in param.opts}
            options |= {"--help"}
            for word in rest:
                option = word.split("=", 1)[0].strip("[]()")
                if option.startswith("--"):
                    assert option in options, (
                        f"{page.name}: `tenantkeys {' '.join(words)}`: no {option}"
                    )
