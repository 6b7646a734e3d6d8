"""The FastAPI edge: session and tenant dependencies, the lifespan, the consistency
middleware and the health routes. Nothing else in dbrouter imports FastAPI."""

from .dependencies import get_db, get_tenant, get_tenant_db

__all__ = ["get_db", "get_tenant", "get_tenant_db"]
