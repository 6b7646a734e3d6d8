"""Alembic script directories for the tests: made with ``dbrouter migrate init``, with
revisions written out from a few lines of operations each."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from dbrouter.migrations import init


@dataclass(frozen=True)
class Revision:
    """A revision: its id, what it follows, and the bodies of upgrade and downgrade."""

    id: str
    down: str | None
    upgrade: str
    downgrade: str = "pass"


# The tenants' tables: notes (through Alembic's operations) and raw_marks (raw SQL, which
# must land in a schema tenant's own schema), then a constraint some data may break.
TENANT_REVISIONS = (
    Revision(
        "t1",
        None,
        """
        op.create_table(
            "notes",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("body", sa.Text, nullable=False),
        )
        op.execute("CREATE TABLE raw_marks (id integer)")
        """,
        """
        op.execute("DROP TABLE raw_marks")
        op.drop_table("notes")
        """,
    ),
    Revision(
        "t2",
        "t1",
        """op.create_check_constraint("ck_notes_body_not_empty", "notes", "body <> ''")""",
        """op.drop_constraint("ck_notes_body_not_empty", "notes", type_="check")""",
    ),
)

PRIMARY_REVISIONS = (
    Revision(
        "p1",
        None,
        """op.create_table("plans", sa.Column("id", sa.Integer, primary_key=True))""",
        """op.drop_table("plans")""",
    ),
    Revision(
        "p2",
        "p1",
        """op.add_column("plans", sa.Column("price", sa.Integer))""",
        """op.drop_column("plans", "price")""",
    ),
)

ANALYTICS_REVISIONS = (
    Revision(
        "a1",
        None,
        """op.create_table("events", sa.Column("id", sa.Integer, primary_key=True))""",
        """op.drop_table("events")""",
    ),
)


def script_directory(path: Path, revisions: tuple[Revision, ...] | list[Revision]) -> Path:
    """A script directory at *path* (made by `init`) holding *revisions*."""
    init(path)
    for revision in revisions:
        add_revision(path, revision)
    return path


def add_revision(path: Path, revision: Revision) -> None:
    """Write *revision* into the script directory *path*."""
    source = f'''"""{revision.id}"""

import sqlalchemy as sa
from alembic import op

revision = {revision.id!r}
down_revision = {revision.down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{textwrap.indent(textwrap.dedent(revision.upgrade).strip(), "    ")}


def downgrade() -> None:
{textwrap.indent(textwrap.dedent(revision.downgrade).strip(), "    ")}
'''
    (path / "versions" / f"{revision.id}.py").write_text(source, encoding="utf-8")


# SQLite alters no constraint in place: its tenants' second revision adds a column.
SQLITE_TENANT_REVISIONS = (
    TENANT_REVISIONS[0],
    Revision(
        "t2",
        "t1",
        """op.add_column("notes", sa.Column("title", sa.Text))""",
        """op.drop_column("notes", "title")""",
    ),
)
