"""The plugin's fixtures, pointed at the suite's primary and standby, serving the test app
of `tests.testing.app`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import MetaData

from tests.support.replication import (
    Replication,
    primary_and_standby_fixture,
    replication_fixture,
)
from tests.testing import app as application
from tests.testing.projects import InnerProject, inner_project

__all__ = ["primary_and_standby_fixture", "replication_fixture"]


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
    return application.Base.metadata


@pytest.fixture
def inner(
    pytester: pytest.Pytester, postgres_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[InnerProject]:
    """A small project using the plugin, run in this process (see `tests.testing.projects`);
    its summary lines are not cut short."""
    monkeypatch.setenv("COLUMNS", "500")
    with inner_project(pytester, postgres_admin_url) as project:
        yield project
