"""docker-compose.yml against the Compose specification and the code it runs.

The schema is the Compose specification vendored in check-jsonschema (``--builtin-schema
vendor.compose-spec``), so the check runs offline; the test points HTTP(S)_PROXY at a dead
port to prove it. Every ``tenantkeys`` command is parsed by the real CLI; every setting in
the shared environment is a field of Settings and the whole set validates.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tenantkeys.config import ENV_PREFIX, load_settings
from tenantkeys.keys.kms import setting_variables
from tests.docs import hcl
from tests.docs.cli_check import check_probe_command, parse_cli

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
REQUIRED_SERVICES = {
    "redis",
    "postgres",
    "worker",
    "beat",
    "api",
    "flower",
    "prometheus",
    "grafana",
    "openbao",
    "openbao-init",
}
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with every variable unset, and ``$$`` -> ``$``."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def test_compose_file_matches_the_compose_specification() -> None:
    dead_proxy = "http://127.0.0.1:9"  # any network use would fail: the check is offline
    env = {**os.environ, "HTTP_PROXY": dead_proxy, "HTTPS_PROXY": dead_proxy}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_part_of_the_service_is_there(services: dict[str, Any]) -> None:
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, sorted(missing)


def test_every_tenantkeys_command_exists_in_the_cli(services: dict[str, Any]) -> None:
    commands = {
        name: [interpolate(str(part)) for part in service["command"]]
        for name, service in services.items()
        if isinstance(service.get("command"), list) and service["command"][:1] == ["tenantkeys"]
    }
    assert {"worker", "beat", "api", "flower"} <= set(commands)
    for argv in commands.values():
        parse_cli(argv)
    expected = {"worker": "worker", "beat": "beat", "api": "api", "flower": "flower"}
    for service, subcommand in expected.items():
        assert commands[service][1] == subcommand, f"{service} runs {commands[service]}"


def test_healthchecks_use_real_commands(services: dict[str, Any]) -> None:
    test = services["worker"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    check_probe_command(["sh", "-c", interpolate(test[1])])
    # The ping addresses celery@<hostname>: the worker must keep Celery's default node name.
    assert "--hostname" not in services["worker"]["command"]


def test_redis_persists_append_only(services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in redis["volumes"]), "AOF needs a volume"


def test_one_beat(services: dict[str, Any]) -> None:
    assert services["beat"]["deploy"]["replicas"] == 1


def test_shared_environment_is_valid_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {k: interpolate(str(v)) for k, v in compose["x-tenantkeys-env"].items()}
    fields = set(setting_variables())
    unknown = {k for k in env if k.startswith(ENV_PREFIX)} - fields
    assert not unknown, f"not settings: {sorted(unknown)}"
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.environment == "production"
    assert settings.kms_provider == "vault"
    assert settings.redis_url.startswith("redis://redis:")
    assert settings.database_url.startswith("postgresql+psycopg://")


def test_stack_uses_openbao_as_a_ready_kms(
    services: dict[str, Any], compose: dict[str, Any]
) -> None:
    env = compose["x-tenantkeys-env"]
    assert env["TENANTKEYS_VAULT_ADDR"] == "http://openbao:8200"
    assert "-dev" in services["openbao"]["command"]
    for name in ("worker", "beat", "api", "flower"):
        depends = services[name]["depends_on"]
        assert depends["openbao-init"]["condition"] == "service_completed_successfully"
    script = (ROOT / "deploy" / "compose" / "openbao-init.sh").read_text()
    assert "bao secrets enable transit" in script
    create = next(
        line for line in script.splitlines() if "transit/keys/" in line and "write" in line
    )
    assert "derived=true" in create and f"transit/keys/{env['TENANTKEYS_VAULT_KEY_NAME']}" in create
    mounts = " ".join(services["openbao-init"]["volumes"])
    assert (
        "./deploy/compose/openbao-init.sh" in mounts
        and "./deploy/compose/openbao-policy.hcl" in mounts
    )


def test_openbao_policy_matches_the_provider() -> None:
    policy = hcl.load(ROOT / "deploy" / "compose" / "openbao-policy.hcl")
    rules = {path: body["capabilities"] for entry in policy["path"] for path, body in entry.items()}
    assert rules == {
        "transit/encrypt/tenantkeys": ["update"],
        "transit/decrypt/tenantkeys": ["update"],
        "transit/keys/tenantkeys": ["read"],
    }


def test_host_paths_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        build = service.get("build")
        if isinstance(build, dict):
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_prometheus_loads_the_alert_rules_and_scrapes_our_services(
    services: dict[str, Any],
) -> None:
    mounts = dict(str(v).split(":")[:2] for v in services["prometheus"]["volumes"])
    assert mounts["./monitoring/prometheus"] == "/etc/prometheus"
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    rule_files = config["rule_files"]
    assert "kms-alerts.yaml" in rule_files
    for rule_file in rule_files:
        assert (ROOT / "monitoring" / "prometheus" / rule_file).is_file()
    targets: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.split(":")
                targets.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            targets |= {(name, int(dns["port"])) for name in dns["names"]}
    for host, port in targets:
        assert host in services, f"Prometheus scrapes {host}, which is not a compose service"
        service = services[host]
        exposed = {
            str(p).split(":")[-1] for p in service.get("ports", []) + service.get("expose", [])
        }
        argv = [str(part) for part in service.get("command", [])]
        assert str(port) in exposed or str(port) in argv, f"{host} does not serve {port}"


def test_grafana_provisions_the_dashboard(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    mounts = dict(str(v).split(":")[:2] for v in grafana["volumes"])
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (
            ROOT / "monitoring" / "grafana" / "provisioning" / "dashboards" / "tenantkeys.yaml"
        ).read_text()
    )["providers"][0]
    dashboard_dir = provider["options"]["path"]
    dashboards = [dst for src, dst in mounts.items() if src.endswith(".json")]
    assert dashboards and all(d.startswith(dashboard_dir + "/") for d in dashboards)
    assert mounts["./monitoring/grafana/tenantkeys-dashboard.json"].startswith(dashboard_dir)
