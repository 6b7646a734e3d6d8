"""The health route: ``GET /health/databases``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..errors import RouterClosedError
from .errors import http_error

if TYPE_CHECKING:
    from ..router import DatabaseRouter

__all__ = ["build_health_router"]


def build_health_router(router: DatabaseRouter, *, path: str) -> APIRouter:
    """An `APIRouter` with ``GET path``: the health report, 200 when healthy, else 503."""
    api = APIRouter(tags=["health"])

    @api.get(path, summary="Database health")
    async def database_health() -> JSONResponse:
        try:
            report = await router.check()
        except RouterClosedError as exc:  # shutting down: unhealthy, never a 500
            answer = http_error(exc)
            assert answer is not None
            raise answer from exc
        return JSONResponse(report.as_dict(), status_code=200 if report.ok else 503)

    return api
