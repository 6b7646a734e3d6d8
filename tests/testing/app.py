"""The application the plugin's own tests exercise, as a user's project would write it: a
module-level router with a primary, a replica and a tenant per database, and an app whose
lifespan is the router's. The URLs name servers that do not exist: in tests the plugin
places every database on the test server."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import String, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbrouter import DatabaseRouter, RouterSettings, get_db, get_tenant_db

__all__ = ["Base", "Note", "app", "router"]

DATABASE = "dbr_plugin"

router = DatabaseRouter(
    RouterSettings(
        databases={
            "primary": {"url": f"postgresql://app:secret@db.invalid/{DATABASE}"},
            "replica": {
                "url": f"postgresql://app:secret@replica.invalid/{DATABASE}",
                "replica_of": "primary",
            },
        },
        tenancy={
            "url_template": f"postgresql://app:secret@db.invalid/{DATABASE}_{{tenant}}",
            "tenants": {"acme": {}, "globex": {}},
        },
    )
)
app = FastAPI(lifespan=router.lifespan)


class Base(DeclarativeBase):
    """The test app's tables, apart from those of other apps the suite imports."""


class Note(Base):
    """A note, unique by its text."""

    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200), unique=True)


class NoteIn(BaseModel):
    """The body of ``POST /notes``."""

    text: str


Writer = Annotated[AsyncSession, Depends(get_db(commit=True))]
Reader = Annotated[AsyncSession, Depends(get_db("replica"))]
TenantWriter = Annotated[AsyncSession, Depends(get_tenant_db(commit=True))]
TenantReader = Annotated[AsyncSession, Depends(get_tenant_db())]


@app.post("/notes", status_code=201)
async def add_note(note: NoteIn, db: Writer) -> dict[str, int]:
    """Write a note on the primary."""
    row = Note(text=note.text)
    db.add(row)
    await db.flush()
    return {"id": row.id}


@app.get("/notes")
async def list_notes(db: Reader) -> list[str]:
    """The notes, read on the replica."""
    return list((await db.scalars(select(Note.text).order_by(Note.id))).all())


@app.get("/standby")
async def standby(db: Reader) -> dict[str, bool]:
    """Whether the replica's server is a standby."""
    return {"in_recovery": bool(await db.scalar(text("SELECT pg_is_in_recovery()")))}


@app.post("/tenant/notes", status_code=201)
async def add_tenant_note(note: NoteIn, db: TenantWriter) -> dict[str, int]:
    """Write a note in the request's tenant."""
    row = Note(text=note.text)
    db.add(row)
    await db.flush()
    return {"id": row.id}


@app.get("/tenant/notes")
async def count_tenant_notes(db: TenantReader) -> dict[str, int]:
    """How many notes the request's tenant has."""
    return {"count": int(await db.scalar(select(func.count()).select_from(Note)) or 0)}


@app.post("/audit", status_code=204)
async def audit() -> None:
    """Write through the module-level router, as services and background work do."""
    async with router.session(commit=True) as session:
        session.add(Note(text="audited"))
