"""Testing applications that use dbrouter: a pytest plugin (``pytest_dbrouter``) with
per-test isolation across every database and tenant, replicas mirroring their primary,
throwaway tenants, an HTTP client for the app, and throwaway PostgreSQL servers.

Install the ``testing`` extra: ``pip install "fastapi-dbrouter[testing]"``.
"""

__all__: list[str] = []
