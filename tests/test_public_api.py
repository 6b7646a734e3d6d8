"""The declared public surface, and the rule that only one module imports FastAPI."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import dbrouter

SOURCE = Path(dbrouter.__file__).parent


def test_all_is_sorted_and_complete() -> None:
    assert list(dbrouter.__all__) == sorted(dbrouter.__all__)
    for name in dbrouter.__all__:
        assert getattr(dbrouter, name) is not None
    public = {name for name in vars(dbrouter) if not name.startswith("_")}
    modules = {path.stem for path in SOURCE.glob("*.py") if not path.stem.startswith("_")}
    modules |= {path.parent.name for path in SOURCE.glob("*/__init__.py")}
    assert public - set(dbrouter.__all__) - modules == set()


def test_every_public_class_and_function_has_a_docstring() -> None:
    for name in dbrouter.__all__:
        value = getattr(dbrouter, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name


def test_only_the_fastapi_package_imports_fastapi() -> None:
    importers = sorted(
        path.relative_to(SOURCE).parts[0]
        for path in SOURCE.rglob("*.py")
        if any(
            line.startswith(
                ("import fastapi", "from fastapi", "import starlette", "from starlette")
            )
            for line in path.read_text().splitlines()
        )
    )
    assert set(importers) == {"fastapi"}


def test_the_core_imports_without_fastapi() -> None:
    code = (
        "import sys\n"
        "sys.modules['fastapi'] = None\n"
        "sys.modules['starlette'] = None\n"
        "from dbrouter.router import DatabaseRouter\n"
        "from dbrouter.settings import RouterSettings\n"
        "r = DatabaseRouter(RouterSettings(databases={'primary': {'url': 'sqlite://'}}))\n"
        "print(r.engine().url)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sqlite+aiosqlite://"


def test_typed_marker_ships() -> None:
    assert (SOURCE / "py.typed").exists()
