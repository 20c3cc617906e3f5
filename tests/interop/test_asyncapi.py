"""docs/contract/asyncapi.yaml validated by the official AsyncAPI parser (@asyncapi/parser 3).

The parser checks the document against the AsyncAPI 3.0 specification and its rules, resolves
every ``$ref`` (into schemas/ too) and checks each schema. A document with an error, and one
whose schema file is broken, must fail: otherwise a silent validator would pass anything.
tests/docs/test_contract.py checks the document against the code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.interop.conftest import Node

pytestmark = pytest.mark.integration

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract"


def validate(node: Node, document: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(node.run("asyncapi.mjs", str(document)))
    return found


def copy_contract(tmp_path: Path) -> Path:
    shutil.copytree(CONTRACT / "schemas", tmp_path / "schemas")
    shutil.copyfile(CONTRACT / "asyncapi.yaml", tmp_path / "asyncapi.yaml")
    return tmp_path / "asyncapi.yaml"


def test_the_contract_is_a_valid_asyncapi_3_document(node: Node) -> None:
    assert node.version("@asyncapi/parser").startswith("3.")
    found = validate(node, CONTRACT / "asyncapi.yaml")
    assert found["errors"] == []
    assert found["warnings"] == []
    assert found["version"] == "3.0.0"


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        pytest.param(
            ("action: send", "action: publish"), "operations/sendSign/action", id="bad-action"
        ),
        pytest.param(
            ("'#/channels/sign/messages/sign'", "'#/channels/sign/messages/nope'"),
            "operations/sendSign/messages/0/$ref",
            id="dangling-ref",
        ),
        pytest.param(
            ("address: tenantkeys.keys", "address: [tenantkeys.keys]"),
            "channels/keys/address",
            id="address-not-a-string",
        ),
    ],
)
def test_a_document_with_an_error_fails(
    node: Node, tmp_path: Path, edit: tuple[str, str], path: str
) -> None:
    document = copy_contract(tmp_path)
    text = document.read_text()
    assert edit[0] in text
    document.write_text(text.replace(edit[0], edit[1], 1))
    found = validate(node, document)
    assert found["version"] is None
    assert path in [error["path"] for error in found["errors"]], found["errors"]


@pytest.mark.parametrize(
    ("file", "field"),
    [
        pytest.param("tenantkeys.sign.arguments.json", "tenant_id", id="sign"),
        # The compact sign_batch's own arguments, reached only through its msgpack body.
        pytest.param("tenantkeys.sign_batch.compact.arguments.json", "payloads", id="compact"),
    ],
)
def test_a_broken_schema_file_fails(node: Node, tmp_path: Path, file: str, field: str) -> None:
    document = copy_contract(tmp_path)
    arguments = tmp_path / "schemas" / file
    schema = json.loads(arguments.read_text())
    schema["properties"][field]["type"] = "text"  # no such JSON Schema type
    arguments.write_text(json.dumps(schema))
    found = validate(node, document)
    assert found["version"] is None
    assert any(f"{field}/type" in error["path"] for error in found["errors"]), found["errors"]
