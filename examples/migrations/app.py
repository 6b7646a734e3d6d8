"""Projects per tenant, on PostgreSQL: a primary with a read replica, and a schema per
tenant, each kind of database migrated with an Alembic script directory of its own
(``primary/`` for the primary's tables, ``tenants/`` for every tenant's).

The URLs come from the environment; the rest of the configuration is here::

    export DBROUTER_DATABASES__PRIMARY__URL=postgresql://app:secret@localhost:5432/app
    export DBROUTER_DATABASES__REPLICA__URL=postgresql://app:secret@localhost:5433/app
    dbrouter --app examples.migrations.app:app tenants create acme
    dbrouter --app examples.migrations.app:app migrate upgrade
    dbrouter --app examples.migrations.app:app migrate status

The replica is never migrated: it replays what the primary's migrations wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import DatabaseRouter, RouterSettings, get_db, get_tenant_db

from .models import Plan, Project

__all__ = ["PlanOut", "ProjectIn", "ProjectOut", "app", "build_app", "build_router"]

HERE = Path(__file__).resolve().parent


def build_router() -> DatabaseRouter:
    """The example's router: the URLs from ``DBROUTER_*``, the script directories here."""
    return DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"migrations": HERE / "primary"},
                "replica": {"replica_of": "primary"},
            },
            tenancy={"strategy": "schema", "migrations": HERE / "tenants"},
        )
    )


class PlanOut(BaseModel):
    """A plan, as listed."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    price_cents: int


class ProjectIn(BaseModel):
    """The body of ``POST /projects``."""

    name: str = Field(min_length=1, max_length=200)


class ProjectOut(BaseModel):
    """A project, as the API returns it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    done: bool


def build_app(router: DatabaseRouter) -> FastAPI:
    """The app on *router*: its lifespan is the router's, so ``--app`` finds the router."""
    app = FastAPI(title="dbrouter migrations example", lifespan=router.lifespan)

    @app.get("/plans", response_model=list[PlanOut])
    async def plans(db: Annotated[AsyncSession, Depends(get_db("replica"))]) -> Sequence[Plan]:
        """Every plan, read from the replica."""
        return (await db.scalars(select(Plan).order_by(Plan.price_cents))).all()

    @app.post("/projects", status_code=201, response_model=ProjectOut)
    async def create_project(
        body: ProjectIn, db: Annotated[AsyncSession, Depends(get_tenant_db(commit=True))]
    ) -> Project:
        """A new project of the tenant named by ``X-Tenant-ID``."""
        project = Project(name=body.name)
        db.add(project)
        await db.flush()
        return project

    @app.get("/projects", response_model=list[ProjectOut])
    async def projects(
        db: Annotated[AsyncSession, Depends(get_tenant_db())],
    ) -> Sequence[Project]:
        """The projects of the tenant named by ``X-Tenant-ID``, and of no other."""
        return (await db.scalars(select(Project).order_by(Project.id))).all()

    return app


app = build_app(build_router())
