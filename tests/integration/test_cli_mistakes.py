"""Every ordinary mistake, through the real ``tenantkeys`` command: its code, one line, a link.

Each row is a mistake an operator makes on a normal day (a URL without its scheme, Redis down,
a mistyped tenant, a missing option ...). The command must exit with one line on stderr that
carries the expected ``TK-*`` code and a link to an existing section of the troubleshooting
page; never ``TK-INTERNAL``, never a traceback, never a password.
"""

from __future__ import annotations

import json
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tenantkeys.errors import DOCS_PAGE, ErrorCode
from tests.conftest import POSTGRES_URL, free_port, port_open, service_missing
from tests.docs import markdown
from tests.integration.cli_runner import CODED_LINE, Cli, cli_deployment

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ANCHORS = markdown.anchors((ROOT / DOCS_PAGE).read_text())
SECRET = "s3cret-pw"
MIN_MISTAKES = 30


@dataclass(frozen=True)
class Mistake:
    """One row: what the operator typed, what they must read."""

    name: str
    args: tuple[str, ...]
    code: ErrorCode
    env: dict[str, str] = field(default_factory=dict)
    #: Text the line must contain (the setting to change, the URL tried ...).
    says: tuple[str, ...] = ()
    #: Runs from this directory instead of the deployment's (a callable of the deployment).
    cwd: Callable[[Path], Path] | None = None
    exit_code: int = 2
    #: Needs RabbitMQ on 127.0.0.1:5672 (skipped locally without it, failed under CI).
    rabbitmq: bool = False


def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


SIGN = ("sign", "--tenant", "alpha", "--data", "hello")
MISTAKES = [
    # -- settings, checked when they are read ---------------------------------------------
    Mistake(
        "redis url without scheme",
        ("config", "check"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_REDIS_URL": "127.0.0.1:6379"},
        ("TENANTKEYS_REDIS_URL", "redis://"),
    ),
    Mistake(
        "redis url of another scheme",
        ("keys", "list", "--tenant", "alpha"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_REDIS_URL": "http://127.0.0.1:6379/0"},
        ("TENANTKEYS_REDIS_URL", "'http'"),
    ),
    Mistake(
        "redis database not a number",
        SIGN,
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:6379/zero"},
        ("TENANTKEYS_REDIS_URL", "'zero'", "***"),
    ),
    Mistake(
        "redis port out of range",
        ("config", "check"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_REDIS_URL": "redis://127.0.0.1:99999/0"},
        ("port",),
    ),
    Mistake(
        "redis url without host",
        ("dlq", "list"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_REDIS_URL": "redis:///0"},
        ("names no host",),
    ),
    Mistake(
        "broker url of an unknown scheme",
        (*SIGN, "--via-queue"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_BROKER_URL": f"rabbitmq://guest:{SECRET}@127.0.0.1:5672//"},
        ("TENANTKEYS_BROKER_URL", "amqp", "***"),
    ),
    Mistake(
        "result backend without scheme",
        ("config", "check"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_RESULT_BACKEND": "127.0.0.1:6379/1"},
        ("TENANTKEYS_RESULT_BACKEND",),
    ),
    Mistake(
        "database url of an unsupported database",
        ("keys", "list", "--tenant", "alpha"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_DATABASE_URL": "mysql://root@127.0.0.1/keys"},
        ("TENANTKEYS_DATABASE_URL", "sqlite", "postgresql"),
    ),
    Mistake(
        "database url that is a file name",
        ("keys", "list", "--tenant", "alpha"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_DATABASE_URL": "keys.db"},
        ("has no scheme",),
    ),
    Mistake(
        "data dir that is a file",
        ("keys", "create", "--tenant", "beta"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_DATA_DIR": "{deployment}/open.key"},
        ("TENANTKEYS_DATA_DIR", "is not a directory"),
    ),
    Mistake(
        "sqlite store under a file",
        ("keys", "create", "--tenant", "beta"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_DATABASE_URL": "sqlite:///{deployment}/open.key/db/keys.db"},
        ("TENANTKEYS_DATABASE_URL", "cannot be created"),
    ),
    Mistake(
        "misspelt provider",
        ("config", "check"),
        ErrorCode.CONFIG_UNKNOWN_PROVIDER,
        {"TENANTKEYS_KMS_PROVIDER": "awz"},
        ("aws",),
    ),
    Mistake(
        "provider without its key",
        ("config", "check"),
        ErrorCode.CONFIG_MISSING_SETTING,
        {"TENANTKEYS_KMS_PROVIDER": "aws"},
        ("TENANTKEYS_AWS_KMS_KEY_ID",),
    ),
    Mistake(
        "local provider in production",
        ("keys", "list", "--tenant", "alpha"),
        ErrorCode.CONFIG_LOCAL_IN_PRODUCTION,
        {"TENANTKEYS_ENVIRONMENT": "production"},
        ("TENANTKEYS_KMS_PROVIDER",),
    ),
    Mistake(
        "a number that is a word",
        ("config", "check"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_CACHE_TTL_SECONDS": "five"},
        ("TENANTKEYS_CACHE_TTL_SECONDS",),
    ),
    Mistake(
        "a prefix with a space",
        ("config", "check"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_REDIS_PREFIX": "my app"},
        ("TENANTKEYS_REDIS_PREFIX",),
    ),
    Mistake(
        "prices that are not JSON",
        ("config", "check"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_KMS_PRICES_USD": "{aws: 1"},
        ("kms_prices_usd",),
    ),
    Mistake(
        "prometheus multiproc dir that is a file",
        ("keys", "list", "--tenant", "alpha"),
        ErrorCode.CONFIG_INVALID,
        {"PROMETHEUS_MULTIPROC_DIR": "{deployment}/open.key"},
        ("PROMETHEUS_MULTIPROC_DIR", "is not a directory"),
    ),
    Mistake(
        "prometheus multiproc dir under a file",
        ("jwks", "--tenant", "alpha"),
        ErrorCode.CONFIG_INVALID,
        {"PROMETHEUS_MULTIPROC_DIR": "{deployment}/open.key/metrics"},
        ("PROMETHEUS_MULTIPROC_DIR", "cannot be created"),
    ),
    Mistake(
        "message signing without its files",
        ("config", "check"),
        ErrorCode.CONFIG_MISSING_SETTING,
        {"TENANTKEYS_MESSAGE_SIGNING": "true"},
        ("TENANTKEYS_MESSAGE_SIGNING_KEY_FILE",),
    ),
    Mistake(
        "flower auth without a password",
        ("config", "check"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_FLOWER_BASIC_AUTH": "admin"},
        ("TENANTKEYS_FLOWER_BASIC_AUTH", "user:password"),
    ),
    Mistake(
        "flower on every address without auth",
        ("flower", "--address", "0.0.0.0"),
        ErrorCode.CONFIG_MISSING_SETTING,
        says=("TENANTKEYS_FLOWER_BASIC_AUTH",),
    ),
    Mistake(
        "rewrap to a provider not configured",
        ("keys", "rewrap", "--to", "aws"),
        ErrorCode.CONFIG_MISSING_SETTING,
        says=("TENANTKEYS_PREVIOUS_KMS_PROVIDER",),
    ),
    # -- services down, named with the URL tried ------------------------------------------
    Mistake(
        "dlq list with Redis down",
        ("dlq", "list"),
        ErrorCode.CACHE_UNAVAILABLE,
        {"TENANTKEYS_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{{closed}}/0"},
        ("redis://:***@127.0.0.1:",),
    ),
    Mistake(
        "dlq replay with Redis down",
        ("dlq", "replay", "--all"),
        ErrorCode.CACHE_UNAVAILABLE,
        {"TENANTKEYS_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{{closed}}/0"},
        ("redis://:***@127.0.0.1:",),
    ),
    Mistake(
        "queued sign with the broker down",
        (*SIGN, "--via-queue"),
        ErrorCode.BROKER_UNAVAILABLE,
        {"TENANTKEYS_BROKER_URL": f"amqp://guest:{SECRET}@127.0.0.1:{{closed}}//"},
        ("broker at amqp://guest:***@127.0.0.1:",),
    ),
    Mistake(
        "redis database the server does not have",
        ("dlq", "list"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_REDIS_URL": "redis://127.0.0.1:6379/999"},
        ("TENANTKEYS_REDIS_URL", "no such database"),
    ),
    Mistake(
        "broker password wrong",
        (*SIGN, "--via-queue"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_BROKER_URL": f"amqp://guest:{SECRET}@127.0.0.1:5672//"},
        ("refused the connection", "TENANTKEYS_BROKER_URL", "amqp://guest:***@"),
        rabbitmq=True,
    ),
    Mistake(
        "broker vhost that does not exist",
        (*SIGN, "--via-queue"),
        ErrorCode.CONFIG_INVALID,
        {"TENANTKEYS_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/no-such-vhost"},
        ("no-such-vhost", "TENANTKEYS_BROKER_URL"),
        rabbitmq=True,
    ),
    Mistake(
        "queued sign with no worker",
        (*SIGN, "--via-queue", "--timeout", "0.5", "--job-id", "mistake-no-worker"),
        ErrorCode.JOB_TIMEOUT,
        says=("tenantkeys job show mistake-no-worker", "inspect ping"),
    ),
    Mistake(
        "key store database down",
        ("keys", "list", "--tenant", "alpha"),
        ErrorCode.STORE_UNAVAILABLE,
        {"TENANTKEYS_DATABASE_URL": POSTGRES_URL.replace(":5432", ":{closed}")},
    ),
    Mistake(
        "ops API port taken",
        ("api", "--port", "{taken}"),
        ErrorCode.PORT_IN_USE,
        says=("tenantkeys api --port P",),
    ),
    Mistake(
        "ops API port out of range",
        ("api", "--port", "99999"),
        ErrorCode.INVALID_ARGUMENT,
        says=("--port", "65535"),
    ),
    # -- where the keys live ----------------------------------------------------------------
    Mistake(
        "keys list outside the deployment",
        ("keys", "list", "--tenant", "alpha"),
        ErrorCode.STORE_NOT_FOUND,
        says=("no key store at", "TENANTKEYS_DATA_DIR"),
        cwd=lambda deployment: deployment.parent / "elsewhere",
    ),
    Mistake(
        "sign from the root directory",
        SIGN,
        ErrorCode.STORE_NOT_FOUND,
        says=("no .tenantkeys directory in / or any parent",),
        cwd=lambda _deployment: Path("/"),
    ),
    Mistake(
        "master key file missing beside its store",
        SIGN,
        ErrorCode.MASTER_KEY_INVALID,
        {"TENANTKEYS_LOCAL_MASTER_KEY_FILE": "{deployment}/gone.key"},
        ("TENANTKEYS_LOCAL_MASTER_KEY_FILE",),
    ),
    Mistake(
        "master key file readable by all",
        SIGN,
        ErrorCode.MASTER_KEY_INVALID,
        {"TENANTKEYS_LOCAL_MASTER_KEY_FILE": "{deployment}/open.key"},
        ("0600",),
    ),
    # -- usage --------------------------------------------------------------------------------
    Mistake("unknown command", ("nonsense",), ErrorCode.INVALID_ARGUMENT, says=("--help",)),
    Mistake(
        "missing option",
        ("keys", "create"),
        ErrorCode.INVALID_ARGUMENT,
        says=("--tenant", "tenantkeys keys create --help"),
    ),
    Mistake("timeout out of range", (*SIGN, "--timeout", "0"), ErrorCode.INVALID_ARGUMENT),
    Mistake(
        "payload file missing",
        ("sign", "--tenant", "alpha", "--file", "missing.txt"),
        ErrorCode.INVALID_ARGUMENT,
        says=("missing.txt",),
    ),
    Mistake(
        "two payload sources",
        (*SIGN, "--file", "missing.txt"),
        ErrorCode.INVALID_ARGUMENT,
        says=("exactly one",),
    ),
    Mistake(
        "job id on an in-process sign",
        (*SIGN, "--job-id", "j1"),
        ErrorCode.INVALID_ARGUMENT,
        says=("--via-queue",),
    ),
    Mistake(
        "job id with spaces", ("job", "show", "a job"), ErrorCode.INVALID_ARGUMENT, says=("job id",)
    ),
    Mistake("purge without ids", ("dlq", "purge"), ErrorCode.INVALID_ARGUMENT, says=("--all",)),
    Mistake(
        "unknown purpose",
        ("keys", "create", "--tenant", "alpha", "--purpose", "mining"),
        ErrorCode.INVALID_PURPOSE,
        says=("signing, encryption or all",),
    ),
    # -- input and keys -------------------------------------------------------------------------
    Mistake(
        "tenant id with a space",
        ("sign", "--tenant", "bad id", "--data", "x"),
        ErrorCode.INVALID_TENANT,
    ),
    Mistake(
        "payload over the limit",
        SIGN,
        ErrorCode.PAYLOAD_TOO_LARGE,
        {"TENANTKEYS_MAX_PAYLOAD_BYTES": "4"},
    ),
    Mistake(
        "canonical JSON that is not JSON",
        ("sign", "--tenant", "alpha", "--canonical-json", "--data", "{not json"),
        ErrorCode.INVALID_JSON,
    ),
    Mistake(
        "tenant without keys",
        ("sign", "--tenant", "nobody", "--data", "x"),
        ErrorCode.KEY_NOT_FOUND,
    ),
    Mistake(
        "mistyped tenant's JWKS",
        ("jwks", "--tenant", "alpah"),
        ErrorCode.KEY_NOT_FOUND,
        says=("'alpah' has no keys",),
    ),
    Mistake(
        "revoke an unknown kid",
        ("keys", "revoke", "--tenant", "alpha", "--kid", "nope"),
        ErrorCode.UNKNOWN_KID,
    ),
    Mistake(
        "verify a JWS that is not one",
        ("verify", "--tenant", "alpha", "--data", "hello", "--jws", "garbage"),
        ErrorCode.INVALID_JWS,
        exit_code=1,
    ),
    Mistake(
        "show an unknown dead letter", ("dlq", "show", "nope"), ErrorCode.DEAD_LETTER_NOT_FOUND
    ),
]


def filled(text: str, values: dict[str, str]) -> str:
    """``{closed}``, ``{taken}`` and ``{deployment}`` replaced (other braces kept)."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, Path]]:
    """A deployment directory with tenant alpha's signing key; Redis DB 4, its own prefix."""
    base = tmp_path_factory.mktemp("mistakes")
    home = base / "deployment"
    (base / "elsewhere").mkdir()
    home.mkdir()
    with cli_deployment(home) as cli:
        cli.ok("keys", "create", "--tenant", "alpha", "--purpose", "signing")
        master = home / ".tenantkeys" / "master.key"
        opened = home / "open.key"
        opened.write_bytes(master.read_bytes())
        opened.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
        yield cli, home


def test_the_table_is_long_enough() -> None:
    assert len(MISTAKES) >= MIN_MISTAKES
    assert ErrorCode.INTERNAL not in {m.code for m in MISTAKES}


Ran = tuple[subprocess.CompletedProcess[str], Path]


def _commit(cli: Cli, home: Path, mistake: Mistake) -> Ran:
    """Run one row's command as the operator typed it; returns what it printed and where."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        fill = {
            "closed": str(closed_port()),
            "taken": str(taken.getsockname()[1]),
            "deployment": str(home),
        }
        args = [filled(a, fill) for a in mistake.args]
        env = {k: filled(v, fill) for k, v in mistake.env.items()}
        cwd = mistake.cwd(home) if mistake.cwd else home
        return cli.run(*args, cwd=cwd, env=env), cwd


@pytest.fixture(scope="module")
def committed(
    deployment: tuple[Cli, Path],
) -> dict[str, Ran]:
    """Every row's command, four at a time: the rows share nothing but the read-only
    deployment, and one CLI start is seconds of mostly waiting on imports and timeouts."""
    cli, home = deployment
    rows = [m for m in MISTAKES if not m.rabbitmq or port_open("127.0.0.1", 5672)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = pool.map(lambda mistake: _commit(cli, home, mistake), rows)
        return {mistake.name: result for mistake, result in zip(rows, done, strict=True)}


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_a_mistake_is_one_coded_line_with_its_doc(
    deployment: tuple[Cli, Path],
    committed: dict[str, Ran],
    mistake: Mistake,
) -> None:
    if mistake.rabbitmq and not port_open("127.0.0.1", 5672):
        service_missing("RabbitMQ at 127.0.0.1:5672")
    home = deployment[1]
    done, cwd = committed[mistake.name]
    lines = done.stderr.strip().splitlines()
    assert done.returncode == mistake.exit_code, done.stderr
    assert len(lines) == 1, done.stderr
    found = CODED_LINE.match(lines[0])
    assert found, lines[0]
    assert found["code"] == mistake.code, lines[0]
    assert found["page"] == DOCS_PAGE and found["anchor"] in ANCHORS, lines[0]
    for text in mistake.says:
        assert text in lines[0], (text, lines[0])
    assert SECRET not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    # A read path that failed created nothing where it ran.
    if mistake.cwd is not None:
        assert not (cwd / ".tenantkeys").exists() or cwd == home


@pytest.mark.parametrize("policy", ["availability", "safety"])
def test_rotate_and_revoke_with_redis_down_say_what_was_not_broadcast(
    tmp_path: Path, policy: str
) -> None:
    with cli_deployment(tmp_path) as cli:
        cli.ok("keys", "create", "--tenant", "alpha", "--purpose", "signing")
        up = cli.run("keys", "rotate", "--tenant", "alpha", "--purpose", "signing")
        assert up.returncode == 0 and "not broadcast" not in up.stderr, up.stderr

        down = {
            "TENANTKEYS_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{closed_port()}/0",
            "TENANTKEYS_KEY_CONFIRM_REDIS_DOWN": policy,
        }
        rotated = cli.run("keys", "rotate", "--tenant", "alpha", "--purpose", "signing", env=down)
        assert rotated.returncode == 0, rotated.stderr
        assert json.loads(rotated.stdout)[0]["new_version"] == 3  # the rotation did happen
        warning = next(line for line in rotated.stderr.splitlines() if "not broadcast" in line)
        assert "tenant 'alpha''s signing key" in warning
        assert "redis://:***@127.0.0.1:" in warning and SECRET not in rotated.stderr
        remedy = "`tenantkeys keys invalidate --tenant alpha --purpose signing` succeeds"
        assert remedy in warning and "TENANTKEYS_KEY_CONFIRM_SECONDS, 5 s" in warning
        assert "TENANTKEYS_CACHE_TTL_SECONDS (300 s)" in warning
        assert "TENANTKEYS_L2_CACHE_TTL_SECONDS (3600 s)" in warning
        assert ("checks the key store every" in warning) == (policy == "safety")

        kid = json.loads(cli.ok("keys", "list", "--tenant", "alpha", "--json"))[0]["kid"]
        revoked = cli.run("keys", "revoke", "--tenant", "alpha", "--kid", kid, env=down)
        assert revoked.returncode == 0, revoked.stderr
        assert f"key {kid} (revoked) was not broadcast" in revoked.stderr

        # The remedy: refused while Redis is down, then bumps the generation every process reads.
        refused = cli.run("keys", "invalidate", "--tenant", "alpha", env=down)
        assert refused.returncode == 2 and refused.stderr.startswith("TK-CACHE-UNAVAILABLE")
        generation = f"{cli.env['TENANTKEYS_REDIS_PREFIX']}:gen:alpha:signing"
        client = redis.Redis.from_url(cli.env["TENANTKEYS_REDIS_URL"])
        before = int(client.get(generation) or 0)
        out = cli.ok("keys", "invalidate", "--tenant", "alpha", "--purpose", "signing")
        assert json.loads(out)["invalidated"] == ["signing"]
        assert int(client.get(generation) or 0) == before + 1
        client.close()
