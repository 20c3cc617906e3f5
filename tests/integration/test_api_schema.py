"""Property-based run over ``/openapi.json`` (schemathesis): no input makes a server error, and
every answer matches the schema it declares. Admin routes are exercised with an admin token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection

from tenantkeys.api import create_app
from tenantkeys.config import Settings
from tests.integration.test_api_support import ADMIN

pytestmark = pytest.mark.integration
#: The API tests' fixtures: api_redis_url (DB 10), api_prefix, api_overrides, api_settings.
pytest_plugins = ["tests.integration.test_api_support"]

#: Bounded: enough to reach every branch of these small routes, quick enough for CI.
MAX_EXAMPLES = 50


@pytest.fixture
def api_schema(api_settings: Settings) -> Iterator[Any]:
    from schemathesis.python import asgi

    app = create_app(api_settings)
    app.state.services.start()
    app.state.services.runtime().service.create_keys("acme")
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()  # runs the app's shutdown: closes what start() opened
        app.state.services.close()


def test_no_server_error_and_answers_match_the_schema(api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9, [op.label for op in operations]
    for operation in operations:
        for mode in GenerationMode:
            exercise(operation, mode)


def exercise(operation: Any, mode: GenerationMode) -> None:
    """Up to ``MAX_EXAMPLES`` requests against one operation, each fully validated.

    Negative mode sends data that violates the schema: it must never cause a server error.
    """

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        # The admin header replaces a generated (possibly "invalid") one, so whether junk was
        # refused is not judged in negative mode; server errors and conformance still are.
        excluded = [negative_data_rejection] if mode is GenerationMode.NEGATIVE else []
        case.call_and_validate(headers=ADMIN, excluded_checks=excluded)

    try:
        check()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        # No parameter and no body: there is nothing to send that violates the schema.
        assert not operation.path_parameters and not operation.query and not operation.body


def test_schema_documents_the_auth_and_the_error_shape(api_settings: Settings) -> None:
    spec = create_app(api_settings).openapi()
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    validate = spec["paths"]["/api/admin/kms/validate"]["post"]
    assert validate["security"] == [{"bearerAuth": []}]
    for status in ("401", "403", "422", "500"):
        assert validate["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    assert "security" not in spec["paths"]["/tenants/{tenant_id}/jwks.json"]["get"]
    assert "security" not in spec["paths"]["/health/ready"]["get"]
