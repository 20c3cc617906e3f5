"""Ops API authentication over *every* route the app declares (so a new route is covered the
day it is added), and random bearer tokens that must never authenticate.

tests/integration/test_api.py holds the hand-written matrix and the no-secret check; this
file derives the route list from the app itself and fuzzes the token.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_api_support import ADMIN_TOKEN, READER_TOKEN
from tests.security.hostile import count_case
from tests.security.test_hostile_input import api  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration
#: Routes that answer without a token on purpose (see tenantkeys.api.auth).
PUBLIC_PREFIXES = ("/health/", "/metrics", "/tenants/", "/openapi.json", "/docs", "/redoc")
READER_ALLOWED = {("GET", "/api/admin/kms/status")}
#: The HTTP front door: off in this app (no scopes file), so it answers TK-FRONT-DOOR-OFF to every
#: caller and queues nothing; its tokens (producers' own, not admin/reader) are tested with the
#: door on in tests/integration/test_front_door.py.
FRONT_DOOR = "/v1/jobs"


def _routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every operation the app documents (its OpenAPI paths)."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            found.append((method.upper(), path.replace("{entry_id}", "0" * 32)))
    return found


def test_every_protected_route_refuses_missing_reader_and_forged_tokens(
    api: Any,  # noqa: F811
) -> None:
    routes = _routes(api.app)
    protected = [(m, p) for m, p in routes if not p.startswith(PUBLIC_PREFIXES)]
    assert ("POST", "/api/admin/kms/validate") in protected, routes
    for method, path in protected:
        body = {"all": True} if path.endswith("/replay") else None
        for headers, allowed in (
            ({}, {401}),
            ({"Authorization": "Bearer forged-token"}, {401}),
            ({"Authorization": f"Bearer {ADMIN_TOKEN}x"}, {401}),
            ({"Authorization": f"Basic {ADMIN_TOKEN}"}, {401}),
            ({"Authorization": f"Bearer {READER_TOKEN}"}, {403}),
        ):
            if (
                headers.get("Authorization", "").endswith(READER_TOKEN)
                and (
                    method,
                    path,
                )
                in READER_ALLOWED
            ):
                continue
            response = api.request(method, path, json=body, headers=headers)
            if path.startswith(FRONT_DOOR):
                assert response.status_code == 404, (method, path, headers, response.text)
                assert response.json()["error"]["code"] == "TK-FRONT-DOOR-OFF"
                continue
            assert response.status_code in allowed, (method, path, headers, response.text)
            error = response.json()["error"]
            assert error["code"] in {"TK-AUTH-REQUIRED", "TK-AUTH-FORBIDDEN"}, error
            for secret in (ADMIN_TOKEN, READER_TOKEN):
                assert secret not in response.text


TOKEN_EXAMPLES = 500


def test_random_tokens_never_authenticate(api: Any) -> None:  # noqa: F811
    @settings(
        max_examples=TOKEN_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80)
        | st.sampled_from([ADMIN_TOKEN[:-1], ADMIN_TOKEN.upper(), READER_TOKEN + " ", "null"])
    )
    def check(token: str) -> None:
        count_case("ops API forged tokens")
        response = api.post("/api/admin/kms/validate", headers={"Authorization": f"Bearer {token}"})
        if token == ADMIN_TOKEN:
            return
        assert response.status_code in {401, 403}, (token, response.text)

    check()
