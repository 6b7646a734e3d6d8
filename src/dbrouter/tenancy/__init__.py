"""Tenants: finding the tenant of a request, validating its id, and routing it to its
database (one engine per tenant) or its schema (one shared engine)."""

from .directory import ListingTenantCatalog, TenantCatalog
from .resolvers import (
    CallableTenantResolver,
    ChainTenantResolver,
    HeaderTenantResolver,
    PathTenantResolver,
    SubdomainTenantResolver,
    TenantRequest,
    TenantResolver,
)
from .strategy import TenancyStrategy

__all__ = [
    "CallableTenantResolver",
    "ChainTenantResolver",
    "HeaderTenantResolver",
    "ListingTenantCatalog",
    "PathTenantResolver",
    "SubdomainTenantResolver",
    "TenancyStrategy",
    "TenantCatalog",
    "TenantRequest",
    "TenantResolver",
]
