"""deploy/k8s against the Kubernetes schemas (offline) and against the code it runs.

kubernetes-validate ships the JSON schemas of each Kubernetes release; the manifests are
validated strictly (unknown fields rejected) against :data:`KUBERNETES_VERSION`. Commands and
exec probes are parsed by the real CLI; HTTP probe paths must be routes the ops API serves.

The API routes come from ``tenantkeys.api.create_app()`` when that module exists; until then
:func:`test_api_probe_paths_are_served_by_the_api` is skipped (reported, not passed) and
:func:`test_api_probe_paths_are_designed_routes` checks them against DESIGN.md's list.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tenantkeys.config import ENV_PREFIX, load_settings
from tenantkeys.keys.kms import setting_variables
from tests.conftest import free_port
from tests.docs.cli_check import check_probe_command, parse_cli

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
#: Pinned: the oldest Kubernetes release still in common managed-service support.
KUBERNETES_VERSION = "1.30.0"
#: The ops API's routes as DESIGN.md ("Ops surface") specifies them.
DESIGN_ROUTES = {
    "/health/live",
    "/health/ready",
    "/health/kms",
    "/metrics",
    "/api/admin/kms/validate",
    "/api/admin/kms/status",
    "/tenants/{tenant_id}/jwks.json",
}
#: Flower 2.x's unauthenticated health route (flower/urls.py).
FLOWER_HEALTH = "/healthcheck"


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def deployments() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == "Deployment"}


def container(name: str) -> dict[str, Any]:
    spec = deployments()[name]["spec"]["template"]["spec"]
    first: dict[str, Any] = spec["containers"][0]
    return first


def api_app() -> Any | None:
    """``tenantkeys.api.create_app()`` (from the environment), or None while it is missing."""
    try:
        module = importlib.import_module("tenantkeys.api")
    except ModuleNotFoundError as exc:
        if exc.name != "tenantkeys.api":  # the module exists but is broken: fail, not skip
            raise
        return None
    try:
        create_app = module.create_app
    except AttributeError:
        return None
    return create_app()


def app_paths(app: Any) -> set[str]:
    """Every path the app routes: its OpenAPI paths plus plain (non-schema) routes."""
    paths = set(app.openapi()["paths"])
    return paths | {
        route.path for route in app.routes if isinstance(getattr(route, "path", None), str)
    }


@pytest.mark.parametrize(
    ("filename", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_manifest_is_valid_kubernetes(filename: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_every_process_has_a_deployment_with_both_probes() -> None:
    found = deployments()
    for name in ("tenantkeys-worker", "tenantkeys-beat", "tenantkeys-api", "tenantkeys-flower"):
        assert name in found, f"no Deployment {name}"
        c = container(name)
        assert "readinessProbe" in c and "livenessProbe" in c, f"{name} lacks a probe"


def test_beat_is_one_replica_recreated() -> None:
    beat = deployments()["tenantkeys-beat"]["spec"]
    assert beat["replicas"] == 1
    assert beat["strategy"]["type"] == "Recreate"


def test_workers_have_a_disruption_budget() -> None:
    worker_labels = deployments()["tenantkeys-worker"]["spec"]["selector"]["matchLabels"]
    budgets = [doc for _, doc in documents() if doc["kind"] == "PodDisruptionBudget"]
    assert any(b["spec"]["selector"]["matchLabels"] == worker_labels for b in budgets)


def test_commands_and_exec_probes_exist_in_the_cli() -> None:
    expected = {
        "tenantkeys-worker": "worker",
        "tenantkeys-beat": "beat",
        "tenantkeys-api": "api",
        "tenantkeys-flower": "flower",
    }
    for name, subcommand in expected.items():
        c = container(name)
        assert c["command"][:2] == ["tenantkeys", subcommand]
        parse_cli(c["command"])
        for probe in ("readinessProbe", "livenessProbe"):
            if "exec" in c[probe]:
                check_probe_command(c[probe]["exec"]["command"])
    # The Celery ping addresses celery@$HOSTNAME: the worker keeps Celery's default node name.
    assert "--hostname" not in container("tenantkeys-worker")["command"]
    assert "exec" in container("tenantkeys-worker")["livenessProbe"]


def http_probes(name: str) -> list[tuple[str, int]]:
    c = container(name)
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    found = []
    for probe in ("readinessProbe", "livenessProbe"):
        http = c[probe].get("httpGet")
        if http:
            port = http["port"]
            found.append((http["path"], ports[port] if isinstance(port, str) else port))
    return found


def test_api_probes_use_the_health_routes_on_the_api_port() -> None:
    c = container("tenantkeys-api")
    context = parse_cli(c["command"])
    probes = http_probes("tenantkeys-api")
    assert {path for path, _ in probes} == {"/health/ready", "/health/live"}
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert {port for _, port in probes} == {context.params["port"]}
    assert context.params["host"] == "0.0.0.0"  # a probe reaches the pod IP, not loopback


def test_api_probe_paths_are_designed_routes() -> None:
    assert {path for path, _ in http_probes("tenantkeys-api")} <= DESIGN_ROUTES


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_api_probe_paths_are_served_by_the_api(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The probe paths are routes of the real app, and answering GET (not 404 / 405)."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # the embedded default writes under ./.tenantkeys
    # Nothing listens here: readiness may say DOWN, but the route must exist.
    monkeypatch.setenv("TENANTKEYS_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    app = api_app()
    if app is None:
        pytest.skip(
            "tenantkeys.api.create_app does not exist yet: probe paths checked "
            "against DESIGN.md only (test_api_probe_paths_are_designed_routes)"
        )
    routes = app_paths(app)
    missing = DESIGN_ROUTES - routes
    assert not missing, f"DESIGN.md routes the API does not serve: {sorted(missing)}"
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        for path, _port in http_probes("tenantkeys-api"):
            assert path in routes, f"the API does not route {path}; it routes {sorted(routes)}"
            status = client.get(path).status_code
            assert status not in (404, 405), f"GET {path} answered {status}"


def test_flower_probes_use_its_health_route() -> None:
    c = container("tenantkeys-flower")
    context = parse_cli(c["command"])
    for path, port in http_probes("tenantkeys-flower"):
        assert path == FLOWER_HEALTH
        assert port == context.params["port"]
    import flower.urls

    assert any(h[0] == FLOWER_HEALTH for h in flower.urls.handlers if isinstance(h, tuple))


def test_settings_are_real_and_validate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values: dict[str, str] = {}
    for _, doc in documents():
        if doc["kind"] == "ConfigMap":
            values.update(doc["data"])
        if doc["kind"] == "Secret":
            values.update(doc.get("stringData", {}))
    fields = set(setting_variables())
    unknown = {k for k in values if k.startswith(ENV_PREFIX)} - fields
    assert not unknown, f"not settings: {sorted(unknown)}"
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.environment == "production" and settings.kms_provider != "local"
    # Every Deployment reads both sources.
    for name in deployments():
        refs = {next(iter(ref.values()))["name"] for ref in container(name)["envFrom"]}
        assert refs == {"tenantkeys-settings", "tenantkeys-secrets"}, name


def test_containers_run_unprivileged() -> None:
    for name, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in pod.get("initContainers", []) + pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, (name, c["name"])
