"""The ``tenantkeys`` command. Thin: parse, call a service, print; errors as one coded line.

Subcommand groups live in their own modules and are imported lazily, so ``tenantkeys sign``
does not import Celery, FastAPI or a cloud SDK it does not use.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from tenantkeys.config import check_prometheus_multiproc_dir
from tenantkeys.errors import ErrorCode, TenantKeysError, doc_link

#: command name -> "module:attribute" (a click command or group).
COMMANDS = {
    "config": "tenantkeys.cli.settings_report:config_group",
    "keys": "tenantkeys.cli.keys:keys_group",
    "sign": "tenantkeys.cli.signing:sign_command",
    "verify": "tenantkeys.cli.signing:verify_command",
    "jwks": "tenantkeys.cli.signing:jwks_command",
    "evidence": "tenantkeys.cli.evidence:evidence_group",
    "job": "tenantkeys.cli.jobs:job_group",
    "demo": "tenantkeys.cli.processes:demo_command",
    "dev": "tenantkeys.cli.processes:dev_command",
    "worker": "tenantkeys.cli.processes:worker_command",
    "worker-ready": "tenantkeys.cli.processes:worker_ready_command",
    "beat": "tenantkeys.cli.processes:beat_command",
    "flower": "tenantkeys.cli.processes:flower_command",
    "api": "tenantkeys.cli.processes:api_command",
    "dlq": "tenantkeys.cli.dlq:dlq_group",
    "queue": "tenantkeys.cli.queue:queue_group",
    "admin": "tenantkeys.cli.admin:admin_group",
    "bench": "tenantkeys.cli.bench:bench_command",
}

EXIT_ERROR = 2


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, _, attribute = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # not built yet in this checkout
                return None
            raise
        command: click.Command = getattr(module, attribute)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; a Redis or broker failure becomes our code, naming its URL."""
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from tenantkeys.cli.context import explain_failure, loaded_settings

            explained = explain_failure(exc, loaded_settings(ctx))
            if explained is None:
                raise
            raise explained from exc


@click.group(cls=LazyGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """tenantkeys: per-tenant keys wrapped by a KMS, JWS signing, scheduled rotation."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def fail(error: TenantKeysError) -> None:
    click.echo(error.one_line(), err=True)
    sys.exit(EXIT_ERROR)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: every failure is one line with a stable code, never a traceback."""
    args = sys.argv[1:] if argv is None else argv
    usage = f"(see {doc_link(ErrorCode.INVALID_ARGUMENT)})"
    try:
        # prometheus-client reads it at import, before any settings: check it first.
        check_prometheus_multiproc_dir()
        return cli.main(args=args, prog_name="tenantkeys", standalone_mode=False)
    except TenantKeysError as exc:
        fail(exc)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        path = exc.ctx.command_path.partition(" ")[2] if exc.ctx else ""
        hint = f" (try: tenantkeys {path} --help)" if path else " (try: tenantkeys --help)"
        message = " ".join(exc.format_message().split())
        click.echo(f"{ErrorCode.INVALID_ARGUMENT}: {message}{hint} {usage}", err=True)
        sys.exit(EXIT_ERROR)
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        click.echo(f"{ErrorCode.INVALID_ARGUMENT}: {message} {usage}", err=True)
        sys.exit(EXIT_ERROR)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if "--debug" in args:
            raise
        click.echo(
            f"{ErrorCode.INTERNAL}: unexpected {type(exc).__name__}; rerun with --debug for "
            f"details (see {doc_link(ErrorCode.INTERNAL)})",
            err=True,
        )
        sys.exit(EXIT_ERROR)
    return None
