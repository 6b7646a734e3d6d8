"""Testing applications that use dbrouter: a pytest plugin (``pytest_dbrouter``) with
per-test isolation across every database and tenant, replicas mirroring their primary,
throwaway tenants, an HTTP client for the app, and throwaway PostgreSQL servers. See
docs/testing.md.

Install the ``testing`` extra: ``pip install "fastapi-dbrouter[testing]"``.
"""

from .errors import IsolationError, UndeclaredDatabaseError

__all__ = ["IsolationError", "UndeclaredDatabaseError"]
