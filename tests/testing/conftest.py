"""The plugin's fixtures, pointed at the suite's primary and standby, serving the test app
of `tests.testing.app`."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import MetaData

from dbrouter.models import Base
from tests.support.replication import Replication, primary_and_standby_fixture
from tests.testing import app as application

__all__ = ["primary_and_standby_fixture"]


@pytest.fixture(scope="session")
def dbrouter_postgres_url(primary_and_standby: Replication) -> str:
    """The suite's replicated primary: no server of the plugin's own."""
    return primary_and_standby.primary.url()


@pytest.fixture(scope="session")
def dbrouter_standby_url(primary_and_standby: Replication) -> str:
    """Its streaming standby."""
    return primary_and_standby.standby.url()


@pytest.fixture(scope="session")
def dbrouter_app() -> Any:
    """The test app."""
    return application.app


@pytest.fixture(scope="session")
def dbrouter_metadata() -> MetaData:
    """The test app's tables."""
    return Base.metadata
