"""The example project's app (``examples/testing``, which the suite has on the Python path),
as the plugin's tests serve it in-process. It is loaded by name, as the plugin loads an
app: the example is a project of its own, with a ``tests`` package of its own, so the
suite's type checker does not import it."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import MetaData

from dbrouter import DatabaseRouter
from dbrouter.loading import load

__all__ = ["Note", "app", "metadata", "router"]

app: Any = load("notes.app:app", "the example app")
router = cast(DatabaseRouter, load("notes.app:router", "the example app"))
metadata = cast(MetaData, load("notes.app:Base.metadata", "the example app"))
Note: Any = load("notes.app:Note", "the example app")
