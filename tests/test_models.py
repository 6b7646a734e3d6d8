"""`dbrouter.models`: naming convention and database-filled timestamps."""

from __future__ import annotations

import asyncio
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.schema import CreateIndex, CreateTable

from dbrouter import DatabaseRouter, RouterSettings
from dbrouter.models import NAMING_CONVENTION, Base, TimestampMixin


class Account(TimestampMixin, Base):
    __tablename__ = "accounts"
    __table_args__ = (
        UniqueConstraint("email"),
        CheckConstraint("length(email) > 3", name="email_length"),
        Index(None, "name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, init=False)
    email: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(100), default="")


class Login(Base):
    __tablename__ = "logins"

    id: Mapped[int] = mapped_column(primary_key=True, init=False)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))


def test_constraint_names_follow_the_convention() -> None:
    accounts, logins = Base.metadata.tables["accounts"], Base.metadata.tables["logins"]
    ddl = str(CreateTable(accounts)) + str(CreateTable(logins))
    assert "CONSTRAINT pk_accounts PRIMARY KEY" in ddl
    assert "CONSTRAINT uq_accounts_email UNIQUE" in ddl
    assert "CONSTRAINT ck_accounts_email_length CHECK" in ddl
    assert "CONSTRAINT fk_logins_account_id_accounts FOREIGN KEY" in ddl
    indexes = [str(CreateIndex(index)) for index in accounts.indexes]
    assert any("ix_accounts_name" in index for index in indexes)
    assert set(NAMING_CONVENTION) == {"ix", "uq", "ck", "fk", "pk"}


def test_models_are_dataclasses() -> None:
    account = Account(email="a@example.com", name="A")
    assert account.email == "a@example.com"
    assert "created_at" not in Account.__init__.__code__.co_varnames


async def test_timestamps_come_from_the_database_and_stay_readable(pg_url: str) -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
    try:
        async with router.engine().begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        async with router.session(commit=True) as session:
            account = Account(email="a@example.com")
            session.add(account)
        # Readable after commit with no lazy load (expire_on_commit=False, eager defaults).
        assert isinstance(account.created_at, datetime)
        assert account.created_at.tzinfo is not None
        created, updated = account.created_at, account.updated_at
        await asyncio.sleep(0.05)
        async with router.session(commit=True) as session:
            stored = (await session.scalars(select(Account))).one()
            stored.name = "renamed"
        assert stored.updated_at > updated
        assert stored.created_at == created
    finally:
        await router.dispose()
