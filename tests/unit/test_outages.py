"""The parts of failure classification that no real server provokes on demand: chains that
loop, wrappers that hold their cause only as ``orig``, errors of the driver's own making,
and refusals psycopg reports without a SQLSTATE. (Failures provoked against real servers
are in ``tests/test_outages.py``.)"""

from __future__ import annotations

import ssl

import asyncpg
import psycopg
import pytest
from sqlalchemy import exc as sa_exc

from dbrouter.errors import BudgetExhaustedError, DatabaseUnavailableError
from dbrouter.outages import (
    FailureReason,
    as_unavailable,
    budget_exhausted,
    classify,
    outage_reason,
    server_outage,
)


def chained(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


def test_a_chain_that_loops_is_read_once() -> None:
    first, second = ValueError("first"), KeyError("second")
    first.__cause__ = second
    second.__cause__ = first
    assert classify(first) == FailureReason("other", None, "KeyError")
    assert outage_reason(first) is None
    assert not budget_exhausted(first)


def test_a_loop_back_to_a_recognised_error_is_still_recognised() -> None:
    refused = ConnectionRefusedError()
    wrapper = RuntimeError("wrapper")
    wrapper.__cause__ = refused
    refused.__context__ = wrapper
    assert classify(wrapper).kind == "unreachable"
    assert outage_reason(wrapper) == "unreachable"


def test_an_error_raised_while_handling_an_outage_carries_it() -> None:
    cleanup = RuntimeError("clean-up failed")
    cleanup.__context__ = ConnectionRefusedError()  # as Python sets it in an except block
    assert classify(cleanup).kind == "unreachable"
    assert outage_reason(cleanup) == "unreachable"


def test_a_wrapper_holding_its_cause_only_as_orig_is_named_after_it() -> None:
    wrapped = sa_exc.DBAPIError("SELECT 1", None, LookupError("driver error"))
    assert classify(wrapped) == FailureReason("other", None, "LookupError")
    assert classify(wrapped).text == "other error: LookupError"


def test_a_connection_invalidated_for_no_known_reason_is_lost() -> None:
    wrapped = sa_exc.DBAPIError("SELECT 1", None, ValueError("odd"), connection_invalidated=True)
    assert classify(wrapped) == FailureReason("connection lost")
    assert outage_reason(wrapped) == "connection lost"
    assert server_outage(wrapped)


@pytest.mark.parametrize(
    "error",
    [ssl.SSLError(1, "wrong version number"), ssl.SSLCertVerificationError("self signed")],
    ids=lambda error: type(error).__name__,
)
def test_tls_errors_are_not_mistaken_for_unreachable_hosts(error: ssl.SSLError) -> None:
    # Every TLS error is an OSError too.
    reason = classify(error)
    assert reason.kind == "TLS"
    assert reason.text.startswith("TLS: ")  # which part of TLS failed, never the host
    assert outage_reason(error) == reason.text


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (asyncpg.exceptions.ClientCannotConnectError("cannot connect"), "unreachable"),
        (asyncpg.exceptions.ConnectionRejectionError("rejected"), "unreachable"),
        (asyncpg.exceptions.ConnectionFailureError("failed"), "connection lost"),
        (asyncpg.exceptions.ProtocolViolationError("protocol"), "connection lost"),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_connection_sqlstates(error: asyncpg.PostgresError, kind: str) -> None:
    reason = classify(error)
    assert (reason.kind, reason.sqlstate) == (kind, error.sqlstate)
    assert outage_reason(error) == reason.text


def test_an_error_about_a_closed_connection_from_the_driver_is_an_outage() -> None:
    closed = asyncpg.exceptions.InterfaceError(
        "cannot call Connection.fetch(): connection is closed"
    )
    assert classify(closed) == FailureReason("connection lost")
    assert outage_reason(closed) == "connection lost"
    misuse = asyncpg.exceptions.InterfaceError("cannot perform operation: another operation")
    assert classify(misuse).kind == "other"
    assert outage_reason(misuse) is None


@pytest.mark.parametrize(
    ("message", "kind", "outage"),
    [
        ("FATAL:  the database system is starting up", "not accepting connections", True),
        ("FATAL:  sorry, too many clients already", "too many connections", True),
        ('FATAL:  password authentication failed for user "app"', "authentication failed", False),
        ("FATAL:  a refusal nobody has seen yet", "other", False),
        ("Connection refused\n\tIs the server running on that host?", "unreachable", True),
    ],
)
def test_psycopg_refusals_without_a_sqlstate(message: str, kind: str, outage: bool) -> None:
    error = psycopg.OperationalError(
        f'connection failed: connection to server at "127.0.0.1", port 5432 failed: {message}'
    )
    assert error.sqlstate is None
    assert classify(error).kind == kind
    assert (outage_reason(error) is not None) is outage


def test_an_unknown_psycopg_refusal_is_named_after_its_class() -> None:
    error = psycopg.OperationalError("connection failed: FATAL:  a refusal nobody has seen yet")
    assert classify(error) == FailureReason("other", None, "OperationalError")


def test_a_server_outage_is_the_server_s_own() -> None:
    refused = ConnectionRefusedError()
    assert server_outage(refused)
    assert not server_outage(ValueError("not an outage"))
    assert not server_outage(sa_exc.TimeoutError("QueuePool limit reached"))
    exhausted = BudgetExhaustedError("primary", "all 2 connections of max_connections are in use")
    assert not server_outage(exhausted)
    assert not server_outage(chained(RuntimeError("wrapper"), exhausted))
    assert budget_exhausted(chained(RuntimeError("wrapper"), exhausted))


def test_as_unavailable_names_the_database_and_keeps_the_cause() -> None:
    refused = ConnectionRefusedError()
    error = as_unavailable(refused, "primary")
    assert isinstance(error, DatabaseUnavailableError)
    assert (error.name, error.reason) == ("primary", "unreachable")
    assert error.__cause__ is refused
    already = DatabaseUnavailableError("reports", "no replica is in rotation")
    assert as_unavailable(already, "primary") is already
    assert as_unavailable(ValueError("a bug"), "primary") is None


def test_dbrouter_s_own_errors_say_why_through_their_cause() -> None:
    wrapped = chained(DatabaseUnavailableError("primary", "unreachable"), ConnectionRefusedError())
    assert classify(wrapped).kind == "unreachable"
    bare = DatabaseUnavailableError("replica", "no replica is in rotation")
    assert classify(bare) == FailureReason("unavailable", detail="no replica is in rotation")
    assert classify(bare).text == "no replica is in rotation"
    assert FailureReason("unavailable").text == "unavailable"
    assert FailureReason("other", "XX000", "InternalServerError").text == (
        "other error: InternalServerError (SQLSTATE XX000)"
    )
