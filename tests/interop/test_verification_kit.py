"""The verification kit of docs/verifying.md, run as written against real signatures.

Each ``<!-- kit: NAME -->`` snippet (Python: joserfc, PyJWT, jwcrypto; Node: jose) is taken from
the page unchanged and given the tenants' JWKS as the ops API serves it. Tenants sign with
``EdDSA``, ``Ed25519`` and ``ES256`` keys, plain and canonical JSON payloads, before and after
two rotations; one tenant moves from ``EdDSA`` to ``Ed25519`` by rotating; the middle key of
each is revoked. Every library must reach the verdict tenantkeys reaches, case by case: valid
signatures verify (returning the bytes signed), revoked keys, altered payloads and other
tenants' signatures fail.
"""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tenantkeys import signing
from tenantkeys.api import create_app
from tenantkeys.config import load_settings
from tenantkeys.errors import InvalidRequest
from tenantkeys.keys.model import Purpose
from tenantkeys.keys.service import KeyService
from tenantkeys.providers.local import LocalProvider
from tests.helpers import make_service
from tests.interop.conftest import Node
from tests.interop.kit import NODE_KITS, PYTHON_KITS, Verify, python_verifiers, snippets

pytestmark = pytest.mark.integration
#: The ops API fixtures (a leased Redis database, a fresh prefix per test): api_overrides.
pytest_plugins = ["tests.integration.test_api_support"]

MAX_AGE = 17
PLAIN = b"evidence: invoice 7 paid"
JSON_DOC = b'{"paid": true, "invoice": 7, "amount": 1.50, "note": "caf\\u00e9"}'
JSON_RESPELLED = '{\n  "amount": 1.5, "invoice": 7,\n  "note": "café", "paid": true\n}'.encode()
#: Tenant -> the algorithm of its first key and of the keys its rotations make.
TENANTS = {
    "legacy": ("EdDSA", "EdDSA"),
    "modern": ("Ed25519", "Ed25519"),
    "ecdsa": ("ES256", "ES256"),
    "migrated": ("EdDSA", "Ed25519"),
}


@dataclass(frozen=True)
class Case:
    name: str
    tenant: str  # the tenant the JWS is verified for
    jws: str
    payload: bytes
    signed: bytes | None  # the bytes a valid signature covers; None: must be refused


@dataclass
class World:
    services: dict[str, KeyService]
    api: TestClient
    cases: list[Case] = field(default_factory=list)

    def jwks(self) -> dict[str, Any]:
        sets = {}
        for tenant in TENANTS:
            response = self.api.get(f"/tenants/{tenant}/jwks.json")
            assert response.status_code == 200, response.text
            assert response.headers["Cache-Control"] == (
                f"public, max-age={MAX_AGE}, must-revalidate"
            )
            sets[tenant] = response.json()
        return sets

    def sign(self, tenant: str, version: str, *, first: bool = True) -> None:
        """Sign both payloads with the tenant's active key; add the cases that must verify."""
        service = self.services[TENANTS[tenant][0 if first else 1]]
        plain = service.sign(tenant, PLAIN).jws
        canonical = service.sign(tenant, JSON_DOC, canonical_json=True).jws
        self.cases += [
            Case(f"{tenant} {version} plain", tenant, plain, PLAIN, PLAIN),
            Case(
                f"{tenant} {version} canonical JSON, given re-serialized",
                tenant,
                canonical,
                JSON_RESPELLED,
                signing.canonicalize(JSON_DOC),
            ),
        ]

    def revoke(self, tenant: str, version: str) -> None:
        """Revoke what ``version`` signed with: its cases must now be refused."""
        jws = next(c.jws for c in self.cases if c.name == f"{tenant} {version} plain")
        kid = json.loads(signing.b64url_decode(jws.split(".")[0]))["kid"]
        self.services["EdDSA"].revoke(tenant, kid)
        self.cases = [
            Case(f"{c.name} (revoked)", c.tenant, c.jws, c.payload, None)
            if c.name.startswith(f"{tenant} {version} ")
            else c
            for c in self.cases
        ]

    def hostile(self) -> list[Case]:
        """Altered payloads and signatures claimed for another tenant, from the valid cases."""
        valid = [c for c in self.cases if c.signed is not None]
        altered = [
            Case(f"{c.name}, payload altered", c.tenant, c.jws, c.payload.replace(b"7", b"8"), None)
            for c in valid
        ]
        foreign = [
            Case(f"{c.name}, verified for modern", "modern", c.jws, c.payload, None)
            for c in valid
            if c.tenant != "modern"
        ]
        return altered + foreign + self.renamed()

    def renamed(self) -> list[Case]:
        """Genuine signatures by a tenant's active Ed25519 key under its other ``alg`` name."""
        cases = []
        for tenant in ("legacy", "modern", "migrated"):
            material = self.services["EdDSA"].active_key(tenant, Purpose.SIGNING).material
            assert material is not None
            other = {"Ed25519": "EdDSA", "EdDSA": "Ed25519"}[material.algorithm]
            header = {"alg": other, "kid": material.kid, signing.TENANT_HEADER: tenant}
            jws = signing.sign_compact(material, header, PLAIN)
            cases.append(Case(f"{tenant} active key signing as {other}", tenant, jws, PLAIN, None))
        return cases


@pytest.fixture
def world(tmp_path: Path, api_overrides: dict[str, Any]) -> Iterator[World]:
    url = api_overrides["database_url"]
    provider = LocalProvider(api_overrides["local_master_key_file"])
    services = {
        alg: make_service(url, provider, signing_algorithm=alg)
        for alg in ("EdDSA", "Ed25519", "ES256")
    }
    settings = load_settings(**api_overrides, jwks_max_age_seconds=MAX_AGE)
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        yield World(services, api)
    for service in services.values():
        service.close()


def run_python(verify: Verify, world: World, cases: list[Case]) -> dict[str, str]:
    jwks = world.jwks()
    verdicts = {}
    for case in cases:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a snippet that warns is a snippet to fix
                covered = verify(jwks[case.tenant], case.jws, case.payload, case.tenant)
        except Exception as exc:  # each library refuses in its own way
            verdicts[case.name] = f"invalid: {type(exc).__name__}: {exc}"
        else:
            verdicts[case.name] = f"valid {base64.b64encode(covered).decode()}"
    return verdicts


def run_node(node: Node, code: str, name: str, world: World, cases: list[Case]) -> dict[str, str]:
    (node.root / f"{name}.mjs").write_text(code)
    request = {
        "jwks": world.jwks(),
        "cases": [
            {
                "name": c.name,
                "tenant": c.tenant,
                "jws": c.jws,
                "payload_b64": base64.b64encode(c.payload).decode(),
            }
            for c in cases
        ],
    }
    return json.loads(node.run("run_kit.mjs", f"{name}.mjs", stdin=json.dumps(request)))


def ours(world: World, case: Case) -> str:
    try:
        world.services["EdDSA"].verify(case.tenant, case.payload, case.jws)
    except InvalidRequest as exc:
        return f"invalid: {exc.code}"
    return "valid"


def check(world: World, node: Node, cases: list[Case]) -> int:
    """Every kit and tenantkeys on every case; returns how many verdicts were compared."""
    expected = {
        c.name: "invalid" if c.signed is None else f"valid {base64.b64encode(c.signed).decode()}"
        for c in cases
    }
    for case in cases:
        assert ours(world, case).startswith("valid" if case.signed else "invalid"), case.name
    code = snippets()
    results = {
        name: run_python(verify, world, cases) for name, verify in python_verifiers().items()
    }
    results |= {name: run_node(node, code[name], name, world, cases) for name in NODE_KITS}
    wrong = [
        f"{kit}: {case}: {verdict[:160]}"
        for kit, verdicts in results.items()
        for case, verdict in verdicts.items()
        if not verdict.startswith(expected[case])
    ]
    assert not wrong, "\n".join(wrong)
    return len(cases) * len(results)


def test_every_kit_snippet_reaches_our_verdict_before_and_after_rotation(
    world: World, node: Node
) -> None:
    for tenant, (first, _) in TENANTS.items():
        world.services[first].create_keys(tenant, [Purpose.SIGNING])
        world.sign(tenant, "v1")
    compared = check(world, node, world.cases + world.hostile())  # before any rotation

    for tenant, (_, then) in TENANTS.items():
        for version in ("v2", "v3"):
            world.services[then].rotate(tenant, "signing")
            world.sign(tenant, version, first=False)
    for tenant in TENANTS:
        world.revoke(tenant, "v2")
    after = world.cases + world.hostile()
    assert sum(c.signed is None for c in after) > len(TENANTS) * 2 * 3  # revoked, altered, foreign
    compared += check(world, node, after)

    algs = {
        tenant: [k["alg"] for k in world.jwks()[tenant]["keys"]] for tenant in ("migrated", "ecdsa")
    }
    assert algs == {"migrated": ["Ed25519", "EdDSA"], "ecdsa": ["ES256", "ES256"]}
    print(
        f"\nkit: {compared} verdicts by {len(PYTHON_KITS + NODE_KITS)} libraries "
        f"(jose {node.version('jose')}) agree with tenantkeys"
    )
