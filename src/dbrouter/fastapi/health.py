"""The health route: ``GET /health/databases``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from ..router import DatabaseRouter

__all__ = ["build_health_router"]


def build_health_router(router: DatabaseRouter, *, path: str) -> APIRouter:
    """An `APIRouter` with ``GET path``: the health report, 200 when healthy, else 503."""
    api = APIRouter(tags=["health"])

    @api.get(path, summary="Database health")
    async def database_health() -> JSONResponse:
        report = await router.check()
        return JSONResponse(report.as_dict(), status_code=200 if report.ok else 503)

    return api
