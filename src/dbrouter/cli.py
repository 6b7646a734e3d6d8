"""The ``dbrouter`` command: operations on the databases of an application."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence

from .errors import (
    ConfigurationError,
    DBRouterError,
    TenantResolutionError,
    UnmanagedTenantError,
)
from .loading import load_router
from .migrations import command as migrate
from .router import DatabaseRouter

__all__ = ["main"]

_DESCRIPTION = """\
Operations on the databases of an application: those configured by DBROUTER_*
environment variables (or DBROUTER_* lines of a .env file in the working
directory), or the application's own router with --app."""
_EPILOG = """\
examples:
  dbrouter check                       ping every database
  dbrouter check --json                the same report as JSON
  dbrouter --app myapp.main:app check  the router of the app's lifespan
  dbrouter tenants list                every tenant that can be enumerated
  dbrouter tenants create acme         create a tenant's database or schema
  dbrouter tenants drop acme --yes     drop it, and everything in it
  dbrouter migrate upgrade             every database and tenant to head

exit status: 0 when all is well, 1 when a database does not answer or an
operation failed, 2 for a usage or configuration error."""

# Errors in what was asked, rather than in carrying it out.
_USAGE_ERRORS = (ConfigurationError, TenantResolutionError, UnmanagedTenantError)

Command = Callable[[DatabaseRouter, argparse.Namespace], Awaitable[int]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line *argv*; returns the exit status."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the app, and its migrations' env.py, import from here
    if hasattr(arguments, "standalone"):
        return int(arguments.standalone(arguments))  # needs no configuration
    command: Command = arguments.run
    try:
        router = DatabaseRouter.from_env() if arguments.app is None else load_router(arguments.app)
        return asyncio.run(_run(command, router, arguments))
    except DBRouterError as exc:
        print(f"dbrouter: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, _USAGE_ERRORS) else 1


async def _run(command: Command, router: DatabaseRouter, arguments: argparse.Namespace) -> int:
    try:
        return await command(router, arguments)
    finally:
        await router.dispose()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbrouter",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        help="use the router of the application: a DatabaseRouter, or a FastAPI app whose "
        "lifespan is router.lifespan (default: configuration from DBROUTER_* and .env)",
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
    check.set_defaults(run=_check)
    tenants = commands.add_parser(
        "tenants",
        help="list, create and drop tenants",
        description="List the tenants, or create and drop a tenant's database or schema.",
    )
    actions = tenants.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="every tenant that can be enumerated, and where its data lives",
        description="Every tenant that can be enumerated: declared ones, the catalog's, "
        "and those whose database or schema the templates name on the server.",
    )
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(run=_list_tenants)
    create = actions.add_parser(
        "create",
        help="create a tenant's database or schema",
        description="Create the database (tenancy.url_template) or schema "
        "(tenancy.schema_template) of a new tenant.",
    )
    create.add_argument("tenant", metavar="ID", help="the new tenant's id")
    create.set_defaults(run=_create_tenant)
    drop = actions.add_parser(
        "drop",
        help="drop a tenant's database or schema, and all its data",
        description="Drop the database or schema of a tenant, and all its data.",
    )
    drop.add_argument("tenant", metavar="ID", help="the tenant's id")
    drop.add_argument(
        "--yes", action="store_true", help="confirm that the tenant's data is to be destroyed"
    )
    drop.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long open sessions may take to finish first (default 10)",
    )
    drop.set_defaults(run=_drop_tenant)
    migrate.add_parser(commands)
    return parser


async def _check(router: DatabaseRouter, arguments: argparse.Namespace) -> int:
    report = await router.check()
    if arguments.json:
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


async def _list_tenants(router: DatabaseRouter, arguments: argparse.Namespace) -> int:
    tenancy = router.tenancy
    rows = [
        {"tenant": tenant, "where": tenancy.where(tenant)}
        for tenant in await router.list_tenants()
    ]
    if arguments.json:
        document = {"strategy": tenancy.settings.strategy, "tenants": rows}
        print(json.dumps(document, indent=2))
    else:
        print(f"strategy: {tenancy.settings.strategy}")
        for row in rows:
            print(f"{row['tenant']:<30} {row['where']}")
    return 0


async def _create_tenant(router: DatabaseRouter, arguments: argparse.Namespace) -> int:
    await router.create_tenant(arguments.tenant)
    tenancy = router.tenancy
    print(f"created tenant {arguments.tenant}: {tenancy.where(arguments.tenant)}")
    return 0


async def _drop_tenant(router: DatabaseRouter, arguments: argparse.Namespace) -> int:
    if not arguments.yes:
        print(
            f"dbrouter: dropping tenant {arguments.tenant!r} destroys its data; "
            "add --yes to confirm",
            file=sys.stderr,
        )
        return 2
    await router.drop_tenant(arguments.tenant, timeout=arguments.timeout)
    print(f"dropped tenant {arguments.tenant}")
    return 0
