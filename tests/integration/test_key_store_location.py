"""The one-key-store rule: every command of a deployment finds the same store, or says why not.

Run through the real ``tenantkeys`` command from the deployment's directory, from a
subdirectory and from ``/``: the same keys, the same JWKS, or TK-STORE-NOT-FOUND naming the
path it looked for. Commands that only read never create a store or a master key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cli_runner import Cli, cli_deployment

pytestmark = pytest.mark.integration

READ_PATHS = [
    ("sign", "--tenant", "alpha", "--data", "x"),
    ("verify", "--tenant", "alpha", "--data", "x", "--jws", "a.b.c"),
    ("jwks", "--tenant", "alpha"),
    ("keys", "list", "--tenant", "alpha"),
    ("keys", "rotate", "--tenant", "alpha"),
    ("keys", "revoke", "--tenant", "alpha", "--kid", "k"),
]


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    home = tmp_path / "deployment"
    home.mkdir()
    with cli_deployment(home) as found:
        yield found


def kids(cli: Cli, cwd: Path) -> list[str]:
    listed = json.loads(cli.ok("keys", "list", "--tenant", "alpha", "--json", cwd=cwd))
    return [v["kid"] for v in listed]


def test_a_subdirectory_finds_the_deployment_store(cli: Cli) -> None:
    created = cli.run("keys", "create", "--tenant", "alpha", "--purpose", "signing")
    assert created.returncode == 0, created.stderr
    store = cli.cwd / ".tenantkeys" / "keys.db"
    assert f"created a new key store at {store}" in created.stderr
    deeper = cli.cwd / "src" / "deep"
    deeper.mkdir(parents=True)

    assert kids(cli, deeper) == kids(cli, cli.cwd) != []
    assert cli.ok("jwks", "--tenant", "alpha", cwd=deeper) == cli.ok("jwks", "--tenant", "alpha")
    signed = json.loads(cli.ok("sign", "--tenant", "alpha", "--data", "x", cwd=deeper))
    verified = cli.run("verify", "--tenant", "alpha", "--data", "x", "--jws", signed["jws"])
    assert verified.returncode == 0, verified.stderr
    assert not (deeper / ".tenantkeys").exists() and not (cli.cwd / "src" / ".tenantkeys").exists()
    report = json.loads(cli.ok("config", "check", "--json", cwd=deeper))
    assert report["key_store"] == str(store)
    assert f"found from {deeper} upward" in report["data_dir"]


def test_the_root_directory_says_where_it_looked_or_takes_the_data_dir(cli: Cli) -> None:
    cli.ok("keys", "create", "--tenant", "alpha", "--purpose", "signing")
    root = Path("/")
    assert not (root / ".tenantkeys").exists(), "a /.tenantkeys would capture every directory"

    done = cli.run("keys", "list", "--tenant", "alpha", cwd=root)
    assert done.returncode == 2
    assert done.stderr.startswith("TK-STORE-NOT-FOUND: no key store at /.tenantkeys/keys.db")
    assert "no .tenantkeys directory in / or any parent" in done.stderr
    assert "TENANTKEYS_DATA_DIR" in done.stderr
    assert not (root / ".tenantkeys").exists()

    data_dir = {"TENANTKEYS_DATA_DIR": str(cli.cwd / ".tenantkeys")}
    listed = cli.run("keys", "list", "--tenant", "alpha", "--json", cwd=root, env=data_dir)
    assert listed.returncode == 0, listed.stderr
    assert [v["kid"] for v in json.loads(listed.stdout)] == kids(cli, cli.cwd)


@pytest.mark.parametrize("args", READ_PATHS, ids=[" ".join(a[:2]) for a in READ_PATHS])
def test_a_read_path_creates_no_store_and_no_master_key(cli: Cli, args: tuple[str, ...]) -> None:
    done = cli.run(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"TK-STORE-NOT-FOUND: no key store at {cli.cwd}/.tenantkeys/")
    assert f"no .tenantkeys directory in {cli.cwd} or any parent" in done.stderr
    assert list(cli.cwd.iterdir()) == []


def test_config_check_creates_nothing_and_says_so(cli: Cli) -> None:
    report = json.loads(cli.ok("config", "check", "--json"))
    assert report["key_store"].endswith("keys.db (not created yet)")
    assert any("no local master key" in w for w in report["warnings"])
    assert list(cli.cwd.iterdir()) == []


def test_a_store_without_its_master_key_is_named_not_replaced(cli: Cli) -> None:
    cli.ok("keys", "create", "--tenant", "alpha", "--purpose", "signing")
    master = cli.cwd / ".tenantkeys" / "master.key"
    master.rename(master.with_name("moved.key"))
    done = cli.run("sign", "--tenant", "alpha", "--data", "x")
    assert done.returncode == 2
    assert done.stderr.startswith("TK-LOCAL-MASTER-KEY-INVALID: the local master key file")
    assert str(master) in done.stderr
    assert not master.exists()
