"""The metrics route: ``GET /metrics`` in the Prometheus text format."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.responses import Response

from ..metrics.prometheus import CONTENT_TYPE, render, router_registry

if TYPE_CHECKING:
    from ..router import DatabaseRouter

__all__ = ["build_metrics_router"]


def build_metrics_router(router: DatabaseRouter, *, path: str) -> APIRouter:
    """An `APIRouter` with ``GET path``: every figure of *router*, read at each scrape."""
    registry = router_registry(router)
    api = APIRouter(tags=["metrics"])

    @api.get(path, summary="Database metrics", response_class=Response)
    async def database_metrics() -> Response:
        return Response(render(registry), media_type=CONTENT_TYPE)

    return api
