"""The declared public surface, and the rule that only one module imports FastAPI."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import typing
from pathlib import Path

import fastapi

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


def test_a_worker_and_the_cli_run_with_fastapi_blocked(tmp_path: Path) -> None:
    code = (
        "import asyncio, sys\n"
        "sys.modules['fastapi'] = None\n"
        "sys.modules['starlette'] = None\n"
        "from sqlalchemy import text\n"
        "from dbrouter import DatabaseRouter, RouterSettings\n"
        "from dbrouter.cli import main\n"
        f"url = 'sqlite:///{tmp_path}/worker.db'\n"
        "async def work():\n"
        "    settings = RouterSettings(\n"
        "        databases={\n"
        "            'primary': {'url': url},\n"
        "            'replica': {'url': url, 'replica_of': 'primary'},\n"
        "        },\n"
        "        tenancy={'tenants': {'acme': {'url': url}}},\n"
        "    )\n"
        "    async with DatabaseRouter(settings) as router:\n"
        "        async with router.session(commit=True) as session:\n"
        "            await session.execute(text('CREATE TABLE t (x int)'))\n"
        "        async with router.session('replica') as session:\n"
        "            assert (await session.scalar(text('SELECT count(*) FROM t'))) == 0\n"
        "        async with router.tenant_session('acme') as session:\n"
        "            assert (await session.scalar(text('SELECT 1'))) == 1\n"
        "        assert (await router.check()).ok\n"
        "asyncio.run(work())\n"
        "import os\n"
        "os.environ['DBROUTER_DATABASES__PRIMARY__URL'] = url\n"
        "assert main(['check']) == 0\n"
        "assert main(['tenants', 'list']) in (0, 2)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_every_module_declares_its_surface() -> None:
    """Every module has ``__all__``, and every public class or function it defines is in it
    (or private by name): nothing is public by accident."""
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        declared: list[str] | None = None
        defined = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
            ):
                declared = list(ast.literal_eval(node.value))
            elif isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            ) and not node.name.startswith("_"):
                defined.add(node.name)
        where = path.relative_to(SOURCE)
        assert declared is not None, f"{where} declares no __all__"
        if path.name != "__init__.py":
            assert defined <= set(declared), f"{where}: {sorted(defined - set(declared))}"


def test_every_type_the_router_hands_out_is_exported() -> None:
    """What a public method or property of `DatabaseRouter` returns is a type a user can
    import from dbrouter (or SQLAlchemy, FastAPI and the builtins)."""
    foreign = (
        "sqlalchemy",
        "fastapi",
        "starlette",
        "builtins",
        "typing",
        "types",
        "contextlib",
        "collections",
    )
    for name, member in inspect.getmembers(dbrouter.DatabaseRouter):
        if name.startswith("_"):
            continue
        function = member.fget if isinstance(member, property) else member
        if not callable(function):
            continue
        namespace = {**vars(sys.modules["dbrouter.router"]), "APIRouter": fastapi.APIRouter}
        hints = typing.get_type_hints(function, namespace)
        returned = hints.get("return")
        for kind in [returned, *typing.get_args(returned)]:
            origin = typing.get_origin(kind) or kind
            if not isinstance(origin, type):
                continue  # a union or a literal: its members are checked one by one
            kind = origin
            if kind.__module__.partition(".")[0] in foreign:
                continue
            kind_name = getattr(kind, "__name__", None)
            assert kind_name in dbrouter.__all__, f"DatabaseRouter.{name} returns {kind!r}"
