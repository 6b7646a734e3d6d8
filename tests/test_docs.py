"""The documentation is checked like code.

1. ``docs/configuration.md`` documents every field of every settings model: one table row
   per field, in the section headed by the model's name, with the field's default and its
   docstring as the meaning. The docstrings are read from ``src/dbrouter/settings.py``, so
   neither side can change without the other.

2. Every ```python block in ``README.md`` and ``docs/*.md`` runs, each on its own, in an
   empty temporary directory with no ``DBROUTER_*`` variable set. Conventions:

   - A block is not collected when the HTML comment lines right above it include
     ``<!-- skip: why -->``.
   - The blocks are formatted with ``ruff format`` like the code; ``<!-- fmt: off -->``
     and ``<!-- fmt: on -->`` around a block keep the formatter off it.
   - ``DBROUTER_*=value`` lines (``export`` optional) of a ```bash or ```sh block are set in the
     environment of the python block right after it.
   - A block may use top-level ``await``; it then runs in an event loop of its own.
   - If a block leaves a FastAPI ``app`` behind, the app's lifespan is started and stopped,
     which checks that every ``get_db(...)`` it uses names a configured database. An app
     on SQLite that a reader can start as it is gets its endpoints called too (`DRIVERS`).
   - Every `DatabaseRouter` a block leaves behind is disposed.

3. ``docs/errors.md`` shows every exception of the tree with its builtin base.

The README's sample of ``dbrouter tenants list``, from its ``.env`` file, is what the
command prints.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import itertools
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from sqlalchemy.engine import make_url

import dbrouter
from dbrouter import (
    DatabaseRouter,
    DatabaseSettings,
    DBRouterError,
    ReplicaHostSettings,
    RouterSettings,
    TenancySettings,
    TenantSettings,
    cli,
)
from tests.conftest import serve

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_SOURCE = ROOT / "src" / "dbrouter" / "settings.py"
SETTINGS_MODELS: list[type[BaseModel]] = [
    RouterSettings,
    DatabaseSettings,
    ReplicaHostSettings,
    TenancySettings,
    TenantSettings,
]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# -- 1. the configuration reference ------------------------------------------------------


def attribute_docstrings(model: type[BaseModel]) -> dict[str, str]:
    """The docstring written below each field of *model* in settings.py, by field name."""
    tree = ast.parse(SETTINGS_SOURCE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == model.__name__:
            docstrings = {}
            for statement, following in itertools.pairwise(node.body):
                if (
                    isinstance(statement, ast.AnnAssign)
                    and isinstance(statement.target, ast.Name)
                    and isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)
                ):
                    docstrings[statement.target.id] = following.value.value
            return docstrings
    raise AssertionError(f"class {model.__name__} not found in {SETTINGS_SOURCE}")


def as_markdown(docstring: str) -> str:
    """A docstring as one line of Markdown: whitespace collapsed, ``code`` as `code`."""
    return " ".join(docstring.split()).replace("``", "`")


def documented_default(field: FieldInfo) -> str:
    """How the reference writes the default of *field*."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True, validated_data={})
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def reference_rows(model: type[BaseModel]) -> dict[str, list[str]]:
    """The rows of the table in the ``### `Model` `` section of configuration.md, by key."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    heading = f"### `{model.__name__}`"
    assert heading in text, f"configuration.md has no section {heading!r}"
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


@pytest.mark.parametrize("model", SETTINGS_MODELS, ids=lambda model: model.__name__)
def test_configuration_reference_documents_every_field(model: type[BaseModel]) -> None:
    docstrings = attribute_docstrings(model)
    rows = reference_rows(model)
    missing = [name for name in model.model_fields if name not in rows]
    extra = [name for name in rows if name not in model.model_fields]
    assert not missing, f"configuration.md, {model.__name__}: no row for {missing}"
    assert not extra, f"configuration.md, {model.__name__}: rows for unknown keys {extra}"
    assert list(rows) == list(model.model_fields), "rows in the order the fields are declared"
    for name, field in model.model_fields.items():
        _, variable, default, meaning = rows[name]
        assert name in docstrings, f"{model.__name__}.{name} has no docstring in settings.py"
        expected = as_markdown(docstrings[name])
        assert meaning == expected, f"the meaning of {name} must be the docstring: {expected}"
        assert default == documented_default(field), f"the default of {name}"
        assert variable.startswith("`DBROUTER_"), f"the environment variable of {name}"
        assert variable.rstrip("`").endswith(name.upper()) or "<KEY>" in variable


# -- 2. the code blocks -------------------------------------------------------------------

FENCE = re.compile(r"^```(\w*)")
COMMENT = re.compile(r"^<!--.*-->$")
SKIP = re.compile(r"^<!-- skip: .+ -->$")
ASSIGNMENT = re.compile(r"^(?:export\s+)?(DBROUTER_\w+)=(.*)$")


@dataclass(frozen=True)
class CodeBlock:
    """A ```python block of a document, with the environment the document gives it."""

    path: Path
    line: int
    source: str
    environment: dict[str, str]
    skipped: bool

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[CodeBlock]:
    """Every ```python block of *path*."""
    blocks: list[CodeBlock] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    environment: dict[str, str] = {}
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        body = lines[index + 1 : end]
        language = opening.group(1)
        if language == "python":
            comments = itertools.takewhile(COMMENT.match, reversed(lines[:index]))
            skipped = any(SKIP.match(comment) for comment in comments)
            blocks.append(CodeBlock(path, index + 1, "\n".join(body), environment, skipped))
            environment = {}
        elif language in ("bash", "sh", "shell"):
            environment = {}
            for line in body:
                match = ASSIGNMENT.match(line.strip())
                if match:
                    environment[match.group(1)] = match.group(2).strip().strip("'\"")
        index = end + 1
    return blocks


BLOCKS = [block for path in DOCUMENTS for block in code_blocks(path) if not block.skipped]


def test_documents_have_code_that_runs() -> None:
    runnable = {block.path.name for block in BLOCKS}
    assert {"README.md", "index.md", "configuration.md", "fastapi.md"} <= runnable


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.name)
async def test_code_block_runs(
    block: CodeBlock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in list(os.environ):
        if key.upper().startswith("DBROUTER_"):
            monkeypatch.delenv(key)
    for key, value in block.environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    # A thread of its own, with no running event loop, so that a block may call
    # asyncio.run() the way a script does.
    await asyncio.to_thread(run_block, block)


def run_block(block: CodeBlock) -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    result = eval(compiled(block), namespace)
    asyncio.run(finish_block(result, namespace, driver_of(block)))


def compiled(block: CodeBlock, source: str | None = None) -> Any:
    """The code of *block*, or of *source* in its place."""
    return compile(
        block.source if source is None else source,
        block.name,
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        dont_inherit=True,
    )


async def finish_block(
    result: Any, namespace: dict[str, Any], driver: Driver | None = None
) -> None:
    """Await a block's top-level code, start and stop its app (calling its endpoints with
    *driver*), dispose its routers."""

    def routers() -> list[DatabaseRouter]:
        # Looked up when needed: top-level await may create routers as the block runs.
        return [value for value in namespace.values() if isinstance(value, DatabaseRouter)]

    try:
        if inspect.iscoroutine(result):
            await result
        app = namespace.get("app")
        if driver is not None:
            assert isinstance(app, FastAPI), "a block with a driver leaves an app behind"
            async with serve(app) as client:
                await driver(client)
        elif isinstance(app, FastAPI) and not any(router.closed for router in routers()):
            async with LifespanManager(app):
                pass
    finally:
        for router in routers():
            await router.dispose()


# -- 2b. the apps of the documents, their endpoints called ---------------------------------

Driver = Callable[[httpx.AsyncClient], Awaitable[None]]


async def answer(client: httpx.AsyncClient, path: str, **options: Any) -> Any:
    """The JSON body of a successful ``GET`` of *path*."""
    response = await client.get(path, **options)
    assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
    return response.json()


async def orders(client: httpx.AsyncClient) -> None:
    assert await answer(client, "/orders/count") == 0
    placed = await client.post("/orders", json={"item": "tea"})
    assert placed.status_code == 201, placed.text
    assert await answer(client, "/orders/count") == 1


async def visits(client: httpx.AsyncClient) -> None:
    assert await answer(client, "/visits/count") == 0
    recorded = await client.post("/visits", json={"page": "/pricing"})
    assert recorded.status_code == 204, recorded.text
    assert await answer(client, "/visits/count") == 1
    assert (await answer(client, "/health/databases"))["status"] == "ok"


async def customers(client: httpx.AsyncClient) -> None:
    created = await client.post("/customers", json={"name": "Ada"})
    assert created.status_code == 201, created.text
    assert created.json() == {"id": 1, "name": "Ada"}


async def projects(client: httpx.AsyncClient) -> None:
    acme, globex = {"X-Tenant-ID": "acme"}, {"X-Tenant-ID": "globex"}
    created = await client.post("/projects", params={"name": "apollo"}, headers=acme)
    assert created.status_code == 201, created.text
    assert created.json() == {"tenant": "acme", "project": "apollo"}
    assert await answer(client, "/projects", headers=acme) == ["apollo"]
    assert await answer(client, "/projects", headers=globex) == []
    assert (await client.get("/projects")).status_code == 400


async def now(client: httpx.AsyncClient) -> None:
    assert re.match(r"\d{4}-\d\d-\d\d", await answer(client, "/now"))


async def whoami(client: httpx.AsyncClient) -> None:
    assert await answer(client, "/t/acme/whoami") == "acme"
    assert (await client.get("/t/initech/whoami")).status_code == 404


async def health(client: httpx.AsyncClient) -> None:
    report = await answer(client, "/health/databases")
    assert report["databases"]["primary"]["status"] == "up"


async def metrics(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert 'db_client_connection_max{pool_name="primary"} 30.0' in response.text


# Each driver calls the endpoints of the one block of its document that holds its marker.
DRIVERS: dict[tuple[str, str], Driver] = {
    ("README.md", '@app.get("/orders/count")'): orders,
    ("index.md", '@app.get("/visits/count")'): visits,
    ("fastapi.md", '@app.post("/customers"'): customers,
    ("fastapi.md", '@app.get("/now")'): now,
    ("tenancy.md", '@app.get("/projects")'): projects,
    ("tenancy.md", '@app.get("/t/{tenant}/whoami")'): whoami,
    ("health.md", "# GET /health/databases"): health,
    ("observability.md", "# GET /metrics"): metrics,
}


def driver_of(block: CodeBlock) -> Driver | None:
    found = [
        driver
        for (document, marker), driver in DRIVERS.items()
        if block.path.name == document and marker in block.source
    ]
    assert len(found) <= 1, f"{block.name} matches more than one driver"
    return found[0] if found else None


@pytest.mark.parametrize(("document", "marker"), list(DRIVERS))
def test_every_driver_has_its_block(document: str, marker: str) -> None:
    matches = [b.name for b in BLOCKS if b.path.name == document and marker in b.source]
    assert len(matches) == 1, f"{marker!r} should be in one block of {document}: {matches}"


def the_block(document: str, marker: str, *, skipped: bool = False) -> CodeBlock:
    """The one ```python block of *document* that holds *marker*."""
    blocks = [
        block
        for path in DOCUMENTS
        for block in code_blocks(path)
        if path.name == document and marker in block.source and block.skipped == skipped
    ]
    assert len(blocks) == 1, f"{marker!r} should be in one block of {document}"
    return blocks[0]


@asynccontextmanager
async def served_on_postgresql(
    block: CodeBlock, source: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """Run *source* (*block* made to use the suite's server) and serve its app."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compiled(block, source), namespace)
    try:
        async with serve(namespace["app"]) as client:
            yield client
    finally:
        await namespace["router"].dispose()


def a_token(response: httpx.Response) -> dict[str, str]:
    """The consistency token of *response*, as headers that send it back."""
    token = response.headers["X-Consistency-Token"]
    assert re.fullmatch(r"primary:[0-9A-F]+/[0-9A-F]+", token), token
    return {"X-Consistency-Token": token}


async def test_the_orders_app_of_the_readme_on_postgresql(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The README's app as written, on PostgreSQL: what it says of consistency tokens."""
    block = the_block("README.md", '@app.get("/orders/count")')
    assert block.source.count('"sqlite:///./app.db"') == 2
    source = block.source.replace('"sqlite:///./app.db"', repr(pg_url))
    async with served_on_postgresql(block, source, monkeypatch, tmp_path) as client:
        await orders(client)
        placed = await client.post("/orders", json={"item": "coffee"})
        assert await answer(client, "/orders/count", headers=a_token(placed)) == 2


async def test_the_worked_example_of_read_your_writes_on_postgresql(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    block = the_block("replicas.md", '@app.get("/notes")', skipped=True)
    assert set(block.environment) == {
        "DBROUTER_DATABASES__PRIMARY__URL",
        "DBROUTER_DATABASES__REPLICA__URL",
        "DBROUTER_DATABASES__REPLICA__REPLICA_OF",
    }
    for key in list(os.environ):
        if key.upper().startswith("DBROUTER_"):
            monkeypatch.delenv(key)
    # The replica is the primary's own database: it leaves rotation, not being a standby,
    # and its reads go to the primary.
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", pg_url)
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__URL", pg_url)
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__REPLICA_OF", "primary")
    async with served_on_postgresql(block, block.source, monkeypatch, tmp_path) as client:
        written = await client.post("/notes", json={"text": "hello"})
        assert written.status_code == 204, written.text
        assert await answer(client, "/notes", headers=a_token(written)) == ["hello"]
        client.cookies.clear()
        assert await answer(client, "/notes") == ["hello"]


def fenced(path: Path, language: str) -> list[list[str]]:
    """The lines of every ```*language* block of *path*."""
    blocks: list[list[str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line == f"```{language}":
            end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
            blocks.append(lines[index + 1 : end])
    return blocks


async def test_the_readme_shows_what_dbrouter_tenants_list_prints(
    postgres_admin_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's ``.env``, read from the working directory, and the command's output;
    its server ``db:5432`` is the suite's, holding one tenant database."""
    readme = ROOT / "README.md"
    [dotenv] = fenced(readme, "dotenv")
    [sample] = [block for block in fenced(readme, "console") if "$ dbrouter tenants list" in block]
    server = make_url(postgres_admin_url)
    here = f"{server.host}:{server.port}"
    for key in list(os.environ):
        if key.upper().startswith("DBROUTER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    environment = "\n".join(dotenv).replace("@db:5432/", f"@{here}/")
    (tmp_path / ".env").write_text(environment + "\n", encoding="utf-8")
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        role_exists = await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = 'app'")
        if not role_exists:
            await admin.execute("CREATE ROLE app LOGIN")
        await admin.execute('CREATE DATABASE "tenant_globex"')
        try:
            assert await asyncio.to_thread(cli.main, ["tenants", "list"]) == 0
        finally:
            await admin.execute('DROP DATABASE "tenant_globex"')
            if not role_exists:
                await admin.execute("DROP ROLE app")
    finally:
        await admin.close()
    printed = capsys.readouterr().out.replace(f"@{here}/", "@db:5432/")
    assert printed.splitlines() == sample[1:]


async def test_creating_and_dropping_a_tenant_as_the_tenancy_page_shows(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    block = the_block("tenancy.md", "await router.create_tenant", skipped=True)
    url = "postgresql://postgres@127.0.0.1:5432/app"
    assert block.source.count(url) == 1
    source = block.source.replace(repr(url).replace("'", '"'), repr(pg_url))
    monkeypatch.chdir(tmp_path)
    await asyncio.to_thread(exec, compiled(block, source), {"__name__": "__main__"})
    connection = await asyncpg.connect(pg_url)
    try:
        schemas = await connection.fetch(
            "SELECT 1 FROM pg_namespace WHERE nspname LIKE 'tenant_%'"
        )
    finally:
        await connection.close()
    assert schemas == []


# -- 3. the exception tree ----------------------------------------------------------------


def test_errors_page_shows_the_exception_tree() -> None:
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    tree = text.split("```text", 1)[1].split("```", 1)[0]
    exported = [getattr(dbrouter, name) for name in dbrouter.__all__]
    errors = [item for item in exported if isinstance(item, type)]
    errors = [item for item in errors if issubclass(item, DBRouterError)]
    for error in errors:
        builtins = [base.__name__ for base in error.__bases__ if base.__module__ == "builtins"]
        builtins = [name for name in builtins if name != "Exception"]
        shown = f"{error.__name__} ({builtins[0]})" if builtins else error.__name__
        assert re.search(rf"(^|── ){re.escape(shown)}$", tree, re.MULTILINE), shown
