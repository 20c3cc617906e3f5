"""Checks a ``tenantkeys ...`` argv against the real CLI without running it.

Deployment files (compose commands, Kubernetes commands and probes) name CLI subcommands and
options; :func:`parse_cli` resolves the subcommand through :data:`tenantkeys.cli.COMMANDS`
and lets click parse the arguments, so a renamed command or option fails a test instead of a
rollout. The callback never runs.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import click

from tenantkeys.cli import COMMANDS, LazyGroup, cli

ROOT = Path(__file__).resolve().parents[2]
#: The Celery app exec probes address (``celery -A workers.app:app ...``).
CELERY_APP = "workers.app:app"


def parse_cli(argv: list[str]) -> click.Context:
    """Parse ``argv`` (starting with ``tenantkeys``) as the CLI would; raise on any mismatch."""
    assert argv and argv[0] == "tenantkeys", f"not a tenantkeys command: {argv}"
    assert len(argv) > 1, "tenantkeys without a subcommand"
    name, args = argv[1], list(argv[2:])
    assert name in COMMANDS, f"`tenantkeys {name}` is not in tenantkeys.cli.COMMANDS"
    command = LazyGroup._load(name)
    assert command is not None, f"`tenantkeys {name}`: its module {COMMANDS[name]} is missing"
    parent = cli.make_context("tenantkeys", [name], resilient_parsing=True)
    path = [name]
    while isinstance(command, click.Group):
        assert args, f"`tenantkeys {' '.join(path)}` needs a subcommand"
        sub = command.get_command(parent, args[0])
        assert sub is not None, f"`tenantkeys {' '.join(path)} {args[0]}` does not exist"
        path.append(args.pop(0))
        command = sub
    return command.make_context(" ".join(["tenantkeys", *path]), args, parent=parent)


def celery_app_defined() -> bool:
    """``workers/app.py`` assigns a module-level ``app`` (what ``-A workers.app:app`` loads)."""
    module, _, attribute = CELERY_APP.partition(":")
    source = ROOT / Path(*module.split(".")).with_suffix(".py")
    if not source.is_file():
        return False
    tree = ast.parse(source.read_text())
    return any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == attribute for t in node.targets)
        for node in tree.body
    )


def check_probe_command(argv: list[str]) -> None:
    """An exec probe or healthcheck: a tenantkeys command, or a Celery ping of our app.

    ``sh -c "..."`` is unwrapped; the Celery form must address ``workers.app:app`` and ping
    with ``inspect ping``.
    """
    if argv[:2] == ["sh", "-c"] or argv[:2] == ["/bin/sh", "-c"]:
        argv = shlex.split(argv[2])
    if argv and argv[0] == "tenantkeys":
        parse_cli(argv)
        return
    assert argv[:1] == ["celery"], f"probe is neither tenantkeys nor celery: {argv}"
    assert argv[1:3] == ["-A", CELERY_APP], f"probe must use -A {CELERY_APP}: {argv}"
    assert celery_app_defined(), f"{CELERY_APP} is not defined in workers/app.py"
    assert "inspect" in argv and "ping" in argv, f"probe must be `inspect ping`: {argv}"
