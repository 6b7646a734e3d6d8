"""``dbrouter migrate``: its arguments, and running it on the application's router.

The command line registers the subcommand with `add_parser`; nothing here imports
Alembic or rich until a migrate command runs, so the rest of the command line works
without the ``migrations`` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigurationError, UnknownDatabaseError
from . import MISSING_EXTRA

if TYPE_CHECKING:
    from ..router import DatabaseRouter
    from .report import MigrationReport
    from .targets import Selection

__all__ = ["add_parser", "initialize", "run"]

_DESCRIPTION = """\
Alembic migrations over every database with migrations set and every tenant
(with tenancy.migrations), each reached with the URL and schema the application
uses. With none of --database, --tenant and --tenants, every target."""
_EPILOG = """\
examples:
  dbrouter migrate init migrations/tenants           a script directory
  dbrouter migrate revision -m "add notes" --tenants a revision for the tenants
  dbrouter migrate upgrade                           every target to head
  dbrouter migrate upgrade --tenant acme --json      one tenant, as JSON
  dbrouter migrate status                            exit 1 when one is behind

exit status: 0 when no target failed (status: every target at head), 1
otherwise, 2 for a usage or configuration error."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate`` and its actions to the subcommands *commands*."""
    migrate = commands.add_parser(
        "migrate",
        help="Alembic migrations across every database and tenant",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = migrate.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="create an Alembic script directory wired to dbrouter",
        description="Create an Alembic script directory whose env.py takes its connections "
        "(and for schema tenants the schema) from dbrouter.",
    )
    init.add_argument("path", metavar="PATH", type=Path, help="a new or empty directory")
    init.add_argument(
        "--metadata",
        metavar="MODULE:ATTRIBUTE",
        help="the application's metadata, for --autogenerate (myapp.models:Base.metadata)",
    )
    init.set_defaults(standalone=initialize)
    revision = actions.add_parser(
        "revision",
        help="write a new revision for a database or for the tenants",
        description="Write a new revision in the script directory of a database or of the "
        "tenants; with --autogenerate, from what the metadata has and the database (or a "
        "tenant) does not.",
    )
    revision.add_argument("-m", "--message", required=True, help="what the revision does")
    revision.add_argument("--database", metavar="NAME", help="the database's script directory")
    revision.add_argument("--tenants", action="store_true", help="the tenants' script directory")
    revision.add_argument(
        "--tenant",
        metavar="ID",
        help="with --autogenerate: the tenant to compare with (default: the first listed)",
    )
    revision.add_argument(
        "--autogenerate", action="store_true", help="compare the metadata with the database"
    )
    revision.set_defaults(run=_run_revision)
    for name, summary in (
        ("upgrade", "upgrade targets to a revision (default head)"),
        ("downgrade", "downgrade targets to a revision"),
        ("current", "the revision of every target"),
        ("status", "which targets are behind head: exit 1 when any is"),
    ):
        action = actions.add_parser(
            name, help=summary, description=summary[0].upper() + summary[1:] + "."
        )
        if name == "upgrade":
            action.add_argument("revision", nargs="?", default="head", help="default: head")
        elif name == "downgrade":
            action.add_argument("revision", help="-1, base, or a revision id")
        _selection_arguments(action, moves=name in ("upgrade", "downgrade"))
        action.set_defaults(run=run)


def _selection_arguments(parser: argparse.ArgumentParser, *, moves: bool) -> None:
    parser.add_argument(
        "--database",
        dest="databases",
        action="append",
        default=[],
        metavar="NAME",
        help="a database with migrations (repeatable)",
    )
    parser.add_argument(
        "--tenant",
        dest="tenant_ids",
        action="append",
        default=[],
        metavar="ID",
        help="a tenant (repeatable)",
    )
    parser.add_argument("--tenants", action="store_true", help="every tenant")
    parser.add_argument(
        "--concurrency",
        type=_positive,
        default=4,
        metavar="N",
        help="targets at once (default 4; at most max_connections)",
    )
    if moves:
        parser.add_argument(
            "--no-wait",
            dest="wait",
            action="store_false",
            help="fail a target another migration holds, rather than wait for it",
        )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {value!r}")
    return number


def _extra_missing() -> bool:
    try:
        import alembic  # noqa: F401
        import rich  # noqa: F401
    except ImportError:
        print(f"dbrouter: {MISSING_EXTRA}", file=sys.stderr)
        return True
    return False


def _failed(error: Exception, status: int) -> int:
    print(f"dbrouter: {error}", file=sys.stderr)
    return status


def initialize(arguments: argparse.Namespace) -> int:
    """``dbrouter migrate init``, which needs no configuration."""
    if _extra_missing():
        return 2
    from .scaffold import init

    try:
        directory = init(arguments.path, metadata=arguments.metadata)
    except ConfigurationError as exc:
        return _failed(exc, 2)
    print(f"created {directory}: point databases.<name>.migrations or tenancy.migrations at it")
    return 0


async def _run_revision(router: DatabaseRouter, arguments: argparse.Namespace) -> int:
    if _extra_missing():
        return 2
    from alembic.util import CommandError

    from .scaffold import revision

    try:
        written = await revision(
            router,
            arguments.message,
            database=arguments.database,
            tenants=arguments.tenants,
            tenant=arguments.tenant,
            autogenerate=arguments.autogenerate,
        )
    except CommandError as exc:
        return _failed(exc, 1)
    except UnknownDatabaseError as exc:
        return _failed(exc, 2)  # a name given wrong: a usage error
    print(f"created {written}")
    return 0


async def run(router: DatabaseRouter, arguments: argparse.Namespace) -> int:
    """``dbrouter migrate upgrade|downgrade|current|status`` on *router*."""
    if _extra_missing():
        return 2
    from .targets import Selection

    selection = Selection.of(
        arguments.databases, arguments.tenant_ids, all_tenants=arguments.tenants
    )
    try:
        return await _run_command(router, arguments, selection)
    except UnknownDatabaseError as exc:
        return _failed(exc, 2)


async def _run_command(
    router: DatabaseRouter, arguments: argparse.Namespace, selection: Selection
) -> int:
    from rich.console import Console

    from .display import ConsoleProgress, print_table
    from .fleet import run_command

    # Names are printed as they are: no :emoji: codes or highlighting in them.
    errors = Console(stderr=True, emoji=False, highlight=False)
    with ConsoleProgress(errors, arguments.action) as progress:
        report: MigrationReport = await run_command(
            router,
            arguments.action,
            getattr(arguments, "revision", None),
            selection,
            concurrency=arguments.concurrency,
            wait=getattr(arguments, "wait", True),
            progress=progress,
        )
    if arguments.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print_table(report, Console(emoji=False, highlight=False))
    return report.exit_status
