"""A small notes service on two databases: writes go to ``primary``, lists to ``replica``.
Tenants ``acme`` and ``globex`` keep notes of their own, each in a database of its own,
under ``/tenant/notes`` with an ``X-Tenant-ID`` header.

Run it with ``./scripts/demo`` (or ``python examples/demo.py --port 8000``). With no
``DBROUTER_DATABASES__...`` variables set, every database is a SQLite file in
``.demo-data/`` under the current directory. Set the variables to run the same app on
PostgreSQL; the tenants are then whatever ``DBROUTER_TENANCY__...`` declares, if anything::

    DBROUTER_DATABASES__PRIMARY__URL=postgresql://app:secret@localhost:5432/app
    DBROUTER_DATABASES__REPLICA__URL=postgresql://app:secret@localhost:5433/app
    DBROUTER_DATABASES__REPLICA__REPLICA_OF=primary
    DBROUTER_TENANCY__TENANTS__ACME__URL=postgresql://app:secret@localhost:5432/acme
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from dbrouter import DatabaseRouter, RouterSettings, get_db, get_tenant_db
from dbrouter.models import Base, TimestampMixin

HOST = "127.0.0.1"
DATA_DIR = Path(".demo-data")
DEMO_TENANTS = ("acme", "globex")


class Note(TimestampMixin, Base):
    """A note; ``created_at`` and ``updated_at`` come from `TimestampMixin`."""

    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True, init=False)
    text: Mapped[str] = mapped_column(String(1000))


class NoteIn(BaseModel):
    """The body of ``POST /notes``."""

    text: str = Field(min_length=1, max_length=1000)


class NoteOut(BaseModel):
    """A note as the API returns it, read straight from the ORM object."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    text: str
    created_at: datetime


# Endpoints name a database, never an engine or a URL: which server "replica" is, only the
# configuration says.
Writer = Annotated[AsyncSession, Depends(get_db(commit=True))]
Reader = Annotated[AsyncSession, Depends(get_db("replica"))]
Primary = Annotated[AsyncSession, Depends(get_db())]
# The same for tenants: the X-Tenant-ID header picks the database, the configuration says
# where it is.
TenantWriter = Annotated[AsyncSession, Depends(get_tenant_db(commit=True))]
TenantReader = Annotated[AsyncSession, Depends(get_tenant_db())]

notes = APIRouter(prefix="/notes", tags=["notes"])


@notes.post("", status_code=201, response_model=NoteOut)
async def create_note(body: NoteIn, db: Writer) -> Note:
    """Store a note; it is committed before the 201 is sent."""
    note = Note(text=body.text)
    db.add(note)
    # The response is built before the commit, so flush now: the INSERT returns the id
    # and the timestamps the database filled in.
    await db.flush()
    return note


@notes.get("", response_model=list[NoteOut])
async def list_notes(
    db: Reader, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> Sequence[Note]:
    """The newest notes, read from the replica."""
    return (await db.scalars(select(Note).order_by(Note.id.desc()).limit(limit))).all()


@notes.get("/{note_id}", response_model=NoteOut)
async def get_note(note_id: int, db: Primary) -> Note:
    """One note, read from the primary so that a note created a moment ago is found."""
    note = await db.get(Note, note_id)
    if note is None:
        raise HTTPException(status_code=404, detail="note not found")
    return note


# The same `Note` model, in the database of the request's tenant.
tenant_notes = APIRouter(prefix="/tenant/notes", tags=["tenant notes"])


@tenant_notes.post("", status_code=201, response_model=NoteOut)
async def create_tenant_note(body: NoteIn, db: TenantWriter) -> Note:
    """Store a note for the tenant named by ``X-Tenant-ID``."""
    note = Note(text=body.text)
    db.add(note)
    await db.flush()
    return note


@tenant_notes.get("", response_model=list[NoteOut])
async def list_tenant_notes(
    db: TenantReader, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> Sequence[Note]:
    """The newest notes of the tenant named by ``X-Tenant-ID``, and of no other."""
    return (await db.scalars(select(Note).order_by(Note.id.desc()).limit(limit))).all()


def configured_by_environment() -> bool:
    """Whether ``DBROUTER_DATABASES__...`` variables, or entries of ``./.env``, declare the
    databases."""
    if any(key.upper().startswith("DBROUTER_DATABASES") for key in os.environ):
        return True
    dotenv = Path(".env")
    if not dotenv.is_file():
        return False
    for line in dotenv.read_text(encoding="utf-8").splitlines():
        key = line.strip().removeprefix("export ").lstrip()
        if key.upper().startswith("DBROUTER_DATABASES"):
            return True
    return False


def demo_settings() -> RouterSettings:
    """The databases from the environment if declared there, else SQLite files: one for
    the primary (and its replica), one per tenant."""
    if configured_by_environment():
        return RouterSettings()
    DATA_DIR.mkdir(exist_ok=True)
    path = (DATA_DIR / "notes.db").resolve()
    tenants = {
        tenant: {"url": f"sqlite:///{(DATA_DIR / f'tenant_{tenant}.db').resolve()}"}
        for tenant in DEMO_TENANTS
    }
    # SQLite has no replication, so the "replica" is the primary's own file. Declaring it
    # anyway keeps the endpoints exactly as they are on PostgreSQL.
    return RouterSettings(
        databases={
            "primary": {"url": f"sqlite:///{path}"},
            "replica": {"url": f"sqlite:///{path}", "replica_of": "primary"},
        },
        tenancy={"strategy": "database", "tenants": tenants},
    )


def build_app(settings: RouterSettings | None = None) -> FastAPI:
    """The demo app on *settings* (default: `demo_settings`)."""
    router = DatabaseRouter(settings if settings is not None else demo_settings())
    tenancy = router.settings.tenancy

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with router.lifespan(app) as state:
            # A real service runs migrations instead; the demo creates its one table, on
            # the primary and in the database of every tenant declared up front.
            async with router.engine("primary").begin() as connection:
                await connection.run_sync(Base.metadata.create_all)
            for tenant in tenancy.tenants if tenancy else ():
                async with router.tenant_session(tenant, commit=True) as session:
                    connection = await session.connection()
                    await connection.run_sync(Base.metadata.create_all)
            yield state

    app = FastAPI(title="dbrouter demo", lifespan=lifespan)
    app.include_router(notes)
    if tenancy is not None:
        app.include_router(tenant_notes)
    app.include_router(router.health_router())
    return app


settings = demo_settings()
app = build_app(settings)


def listen(port: int) -> socket.socket:
    """A socket listening on 127.0.0.1:*port*, bound here so that a busy port is the first
    thing the demo reports; `SystemExit` saying what to do when it cannot be had."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As uvicorn does: a port left in TIME_WAIT by the last run can be bound again at once.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            reason = f"port {port} is already in use on {HOST}"
        else:
            reason = f"cannot listen on {HOST}:{port}: {exc.strerror or exc}"
        raise SystemExit(
            f"dbrouter demo: {reason}.\n"
            f"Start it on another port with --port, e.g. ./scripts/demo --port {free_port()}"
        ) from None
    sock.set_inheritable(True)
    return sock


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def port_number(text: str) -> int:
    """A TCP port given on the command line."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (1-65535): {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the demo on 127.0.0.1 after printing how to try it."""
    parser = argparse.ArgumentParser(description="Serve the dbrouter demo.")
    parser.add_argument(
        "--port",
        type=port_number,
        default=os.environ.get("DEMO_PORT", "8000"),
        help="port to listen on (default: $DEMO_PORT or 8000)",
    )
    port = parser.parse_args(argv).port
    sock = listen(port)
    base = f"http://{HOST}:{port}"
    if configured_by_environment():
        where = "the databases declared by the DBROUTER_* variables"
    else:
        where = f"SQLite files in {DATA_DIR.resolve()}"
    as_json = "-H 'Content-Type: application/json'"
    lines = [
        f"dbrouter demo on {base} (API docs: {base}/docs), using {where}.",
        "Try:",
        f"""  curl -X POST {base}/notes {as_json} -d '{{"text": "hello"}}'""",
        f"  curl {base}/notes",
        f"  curl {base}/notes/1",
        f"  curl {base}/health/databases",
    ]
    if settings.tenancy is not None:
        tenants = sorted(settings.tenancy.tenants)[:2] or ["acme"]
        lines.append(
            f"  curl -X POST {base}/tenant/notes -H 'X-Tenant-ID: {tenants[0]}' {as_json} "
            f"""-d '{{"text": "for {tenants[0]} only"}}'"""
        )
        lines += [f"  curl {base}/tenant/notes -H 'X-Tenant-ID: {t}'" for t in tenants]
    print("\n".join(lines) + "\n", flush=True)
    uvicorn.Server(uvicorn.Config(app, host=HOST, port=port)).run(sockets=[sock])


if __name__ == "__main__":
    main()
