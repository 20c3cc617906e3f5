"""Property-based run over ``/openapi.json`` (schemathesis): no input makes a server error, and
every answer matches the schema it declares. Admin routes are exercised with an admin token; the
front door (``/v1/jobs``) is on, with that same token as a producer's that may sign for every
tenant, on a Redis database of its own (the jobs it queues are flushed with it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection

from tenantkeys.api import create_app
from tenantkeys.config import Settings
from tests.integration.test_api_support import ADMIN, ADMIN_TOKEN, sha256_hex
from tests.redis_databases import lease_database

pytestmark = pytest.mark.integration
#: The API tests' fixtures: api_redis_url (own Redis DB), api_prefix, api_overrides, api_settings.
pytest_plugins = ["tests.integration.test_api_support"]

#: Bounded: enough to reach every branch of these small routes, quick enough for CI.
MAX_EXAMPLES = 50


@pytest.fixture
def api_schema(api_settings: Settings, tmp_path: Path) -> Iterator[Any]:
    from schemathesis.python import asgi

    scopes = tmp_path / "scopes.json"
    producer = {"name": "fuzz", "token_sha256": sha256_hex(ADMIN_TOKEN), "tenants": ["*"]}
    scopes.write_text(json.dumps({"producers": [producer]}))
    database = lease_database("api-schema")
    front_door = api_settings.model_copy(
        update={
            "producer_scopes_file": scopes,
            # ?wait= is exercised without holding each example for long.
            "front_door_max_wait_seconds": 0.05,
            "redis_url": database.url,
            "broker_url": database.url,
            "result_backend": database.url,
        }
    )
    app = create_app(front_door)
    app.state.services.start()
    app.state.services.runtime().service.create_keys("acme")
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()  # runs the app's shutdown: closes what start() opened
        app.state.services.close()
        database.release()


def test_no_server_error_and_answers_match_the_schema(api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    labels = {op.label for op in operations}
    assert {"POST /v1/jobs/sign", "POST /v1/jobs/sign-batch", "GET /v1/jobs/{job_id}"} <= labels
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
