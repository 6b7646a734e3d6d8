"""What a test's ``dbrouter`` marker asks for, in projects run in this process: the guard
on declared databases, mirroring off, and clear errors for markers that make no sense."""

from __future__ import annotations

import textwrap

from tests.testing.projects import InnerProject


def test_the_marker_declares_what_a_test_touches(inner: InnerProject) -> None:
    inner.configure('dbrouter_router = "inner_app:router"')
    inner.pytester.makepyfile(
        test_guard=textwrap.dedent(
            """\
            import pytest
            from sqlalchemy import text


            async def read(router, name=None):
                async with router.session(name) as session:
                    return await session.scalar(text("SELECT 1"))


            @pytest.mark.dbrouter(databases=["primary"])
            async def test_declared(dbrouter):
                assert await read(dbrouter) == 1


            @pytest.mark.dbrouter(databases=["primary"])
            async def test_undeclared_replica(dbrouter):
                await read(dbrouter, "replica")


            @pytest.mark.dbrouter(databases=["primary"])
            async def test_undeclared_and_swallowed(dbrouter):
                try:
                    await read(dbrouter, "replica")
                except Exception:
                    pass


            @pytest.mark.dbrouter(tenants=["acme"])
            async def test_declared_tenant(dbrouter):
                async with dbrouter.tenant_session("acme") as session:
                    assert await session.scalar(text("SELECT 1")) == 1


            @pytest.mark.dbrouter(databases="__all__", tenants=[])
            async def test_undeclared_tenant(dbrouter):
                async with dbrouter.tenant_session("acme") as session:
                    await session.scalar(text("SELECT 1"))


            async def test_no_marker_no_guard(dbrouter):
                assert await read(dbrouter, "replica") == 1
            """
        )
    )
    inner.pytester.makepyfile(
        test_bad_marks=textwrap.dedent(
            """\
            import pytest


            @pytest.mark.dbrouter(databse=["primary"])
            async def test_misspelt(dbrouter):
                pass


            @pytest.mark.dbrouter("primary")
            async def test_positional(dbrouter):
                pass


            @pytest.mark.dbrouter(databases="primary")
            async def test_a_string(dbrouter):
                pass


            @pytest.mark.dbrouter(databases=["nope"])
            async def test_unknown_database(dbrouter):
                pass


            @pytest.mark.dbrouter(mirror="no")
            async def test_mirror_not_a_bool(dbrouter):
                pass


            @pytest.mark.dbrouter(mirror=False)
            async def test_no_standby(dbrouter):
                pass
            """
        )
    )
    result = inner.run("-rA")
    # The swallowed one fails at teardown; the markers that make no sense fail to set up.
    result.assert_outcomes(passed=4, failed=2, errors=7)
    for line in (
        "FAILED test_guard.py::test_undeclared_replica - *UndeclaredDatabaseError: this test "
        "touched database 'replica', which it does not declare; declared: databases "
        "[[]'primary'], tenants [[]]. Add it to the test's marker*",
        "ERROR test_guard.py::test_undeclared_and_swallowed - Failed: this test touched "
        "database 'replica'*",
        "FAILED test_guard.py::test_undeclared_tenant - *this test touched tenant 'acme'*",
    ):
        result.stdout.fnmatch_lines([line])
    for line in (
        "ERROR *test_misspelt - *unknown argument 'databse'; valid arguments: databases, "
        "mirror, tenants",
        "ERROR *test_positional - *takes keyword arguments only*",
        "ERROR *test_a_string - *databases must be a list of names or '__all__', not 'primary'",
        "ERROR *test_unknown_database - *databases names 'nope', which the router does not "
        "have; configured: primary, replica",
        "ERROR *test_mirror_not_a_bool - *mirror must be True or False, not 'no'",
        "ERROR *test_no_standby - *no standby is configured*--dbrouter-standby-url*",
    ):
        result.stdout.fnmatch_lines([line])


def test_the_guard_on_for_every_test(inner: InnerProject) -> None:
    inner.configure('dbrouter_router = "inner_app:router"', "dbrouter_guard = true")
    inner.pytester.makepyfile(
        test_guarded=textwrap.dedent(
            """\
            from sqlalchemy import text


            async def test_the_default_database_is_declared(dbrouter):
                async with dbrouter.session() as session:
                    assert await session.scalar(text("SELECT 1")) == 1


            async def test_the_replica_is_not(dbrouter):
                async with dbrouter.session("replica") as session:
                    await session.scalar(text("SELECT 1"))
            """
        )
    )
    result = inner.run("-rA")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED *test_the_replica_is_not - *database 'replica'*"])
