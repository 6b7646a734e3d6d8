"""Plans have a price

Revision ID: primary_0002
Revises: primary_0001
Create Date: 2026-12-01 09:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "primary_0002"
down_revision: str | Sequence[str] | None = "primary_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "plans", sa.Column("price_cents", sa.Integer(), nullable=False, server_default="0")
    )
    op.execute("UPDATE plans SET price_cents = 1900 WHERE name = 'team'")


def downgrade() -> None:
    op.drop_column("plans", "price_cents")
