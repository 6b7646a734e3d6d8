"""Tenants: finding the tenant of a request, validating its id, and routing it to its
database (one engine per tenant) or its schema (one shared engine)."""

from .directory import TenantCatalog
from .resolvers import (
    CallableTenantResolver,
    ChainTenantResolver,
    HeaderTenantResolver,
    PathTenantResolver,
    SubdomainTenantResolver,
    TenantRequest,
    TenantResolver,
)

__all__ = [
    "CallableTenantResolver",
    "ChainTenantResolver",
    "HeaderTenantResolver",
    "PathTenantResolver",
    "SubdomainTenantResolver",
    "TenantCatalog",
    "TenantRequest",
    "TenantResolver",
]
