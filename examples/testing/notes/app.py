"""The notes service: notes are written on the primary and listed from the replica; each
tenant (``X-Tenant-ID``) keeps notes of its own, in a database of its own.

The URLs are the production ones; in tests, dbrouter's plugin places every database on
the test server.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import String, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from dbrouter import DatabaseRouter, RouterSettings, get_db, get_tenant_db
from dbrouter.models import Base

__all__ = ["Base", "Note", "app", "router"]

router = DatabaseRouter(
    RouterSettings(
        databases={
            "primary": {"url": "postgresql://notes:secret@db.internal/notes"},
            "replica": {
                "url": "postgresql://notes:secret@replica.internal/notes",
                "replica_of": "primary",
            },
        },
        tenancy={
            "url_template": "postgresql://notes:secret@db.internal/notes_{tenant}",
            "tenants": {"acme": {}, "globex": {}},
        },
    )
)
app = FastAPI(lifespan=router.lifespan)


class Note(Base):
    """A note; no two notes of one database have the same text."""

    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True, init=False)
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
    """Every note, read on the replica."""
    return list((await db.scalars(select(Note.text).order_by(Note.id))).all())


@app.get("/replica")
async def replica(db: Reader) -> dict[str, bool]:
    """Whether the server behind the replica is a standby."""
    return {"standby": bool(await db.scalar(text("SELECT pg_is_in_recovery()")))}


@app.post("/tenant/notes", status_code=201)
async def add_tenant_note(note: NoteIn, db: TenantWriter) -> dict[str, int]:
    """Write a note in the request's tenant."""
    row = Note(text=note.text)
    db.add(row)
    await db.flush()
    return {"id": row.id}


@app.get("/tenant/notes")
async def list_tenant_notes(db: TenantReader) -> list[str]:
    """The request's tenant's notes."""
    return list((await db.scalars(select(Note.text).order_by(Note.id))).all())
