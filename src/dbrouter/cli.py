"""The ``dbrouter`` command: operations on the databases configured by ``DBROUTER_*``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from .errors import DBRouterError
from .migrations import command as migrate
from .router import DatabaseRouter
from .settings import RouterSettings
from .urls import render

__all__ = ["main"]

_DESCRIPTION = """\
Operations on the databases configured by DBROUTER_* environment variables,
or by DBROUTER_* lines of a .env file in the working directory."""
_EPILOG = """\
examples:
  dbrouter check           ping every database
  dbrouter check --json    the same report as JSON
  dbrouter tenants list    the tenants declared in configuration

exit status: 0 when all is well, 1 when a database does not answer,
2 for a usage or configuration error."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line *argv*; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="dbrouter",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(
        dest="command", required=True, title="commands", metavar="COMMAND"
    )
    check = commands.add_parser(
        "check",
        help="ping every configured database",
        description="Ping every configured database and print its status and latency.",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    tenants = commands.add_parser(
        "tenants",
        help="tenants declared in configuration",
        description="List the tenants declared in configuration.",
    )
    tenants.add_argument(
        "action", choices=["list"], help="list: print each tenant and where its data lives"
    )
    migrate.add_parser(commands)
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "migrate":
            return _migrate(arguments)
        if arguments.command == "tenants":
            return _list_tenants()
        return asyncio.run(_check(as_json=arguments.json))
    except DBRouterError as exc:
        print(f"dbrouter: {exc}", file=sys.stderr)
        return 2


def _migrate(arguments: argparse.Namespace) -> int:
    if hasattr(arguments, "standalone"):
        return int(arguments.standalone(arguments))

    async def run() -> int:
        router = DatabaseRouter.from_env()
        try:
            return int(await arguments.run(router, arguments))
        finally:
            await router.dispose()

    return asyncio.run(run())


async def _check(*, as_json: bool) -> int:
    router = DatabaseRouter.from_env()
    try:
        report = await router.check()
    finally:
        await router.dispose()
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for name, health in report.databases.items():
            detail = (
                f"{health.latency_ms:.1f} ms" if health.latency_ms is not None else health.error
            )
            print(f"{name:<20} {health.status:<5} {detail}")
            for replica in health.replicas:
                rotation = "in rotation" if replica.in_rotation else f"out: {replica.reason}"
                lag = "" if replica.lag_seconds is None else f", lag {replica.lag_seconds:.1f} s"
                print(f"  {replica.name:<18} {rotation}{lag}")
    return 0 if report.ok else 1


def _list_tenants() -> int:
    settings = RouterSettings()
    if settings.tenancy is None:
        print("dbrouter: tenancy is not configured", file=sys.stderr)
        return 2
    tenancy = settings.tenancy
    print(f"strategy: {tenancy.strategy}")
    for tenant, tenant_settings in sorted(tenancy.tenants.items()):
        where = render(tenant_settings.url) if tenant_settings.url else "(url template)"
        if tenancy.strategy == "schema":
            where = tenancy.schema_template.replace("{tenant}", tenant)
        print(f"{tenant:<30} {where}")
    if tenancy.url_template:
        print("other tenants: any valid id whose database exists (url_template)")
    return 0
