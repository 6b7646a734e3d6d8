"""`SingleFlight`: one run per key at a time, shared by every caller, results and errors
alike; callers that give up do not stop the work."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

from dbrouter.singleflight import SingleFlight

T = TypeVar("T")


class Work:
    """A piece of work that counts its runs and finishes when told to."""

    def __init__(self, result: object = None, error: BaseException | None = None) -> None:
        self.result = result
        self.error = error
        self.runs = 0
        self.finished = 0
        self.cancelled = 0
        self.release = asyncio.Event()

    async def __call__(self) -> object:
        self.runs += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        if self.error is not None:
            raise self.error
        return self.result


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """What the event loop reports to its exception handler during the block."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        yield reported
    finally:
        loop.set_exception_handler(previous)


async def within(waiting: Awaitable[T]) -> T:
    """*waiting*'s outcome, which must come soon: a wait that never ends fails the test."""
    return await asyncio.wait_for(waiting, 5)


async def test_concurrent_callers_share_one_run() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    result = object()
    work = Work(result)
    callers = [asyncio.create_task(flight.run("acme", work)) for _ in range(3)]
    await settle()
    assert work.runs == 1
    work.release.set()
    assert await within(asyncio.gather(*callers)) == [result, result, result]
    assert work.runs == 1


async def test_other_keys_run_on_their_own() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    acme, globex = Work("acme"), Work("globex")
    first = asyncio.create_task(flight.run("acme", acme))
    second = asyncio.create_task(flight.run("globex", globex))
    await settle()
    assert (acme.runs, globex.runs) == (1, 1)
    assert len(flight.running()) == 2
    globex.release.set()
    assert await within(second) == "globex"
    assert not first.done()
    acme.release.set()
    assert await within(first) == "acme"


async def test_an_error_reaches_every_caller() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    error = LookupError("no such tenant")
    work = Work(error=error)
    callers = [asyncio.create_task(flight.run("acme", work)) for _ in range(3)]
    await settle()
    work.release.set()
    outcomes = await within(asyncio.gather(*callers, return_exceptions=True))
    assert outcomes == [error, error, error]
    assert all(outcome is error for outcome in outcomes)
    assert work.runs == 1


async def test_a_cancelled_caller_stops_neither_the_work_nor_the_others() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    work = Work("done")
    leaving = asyncio.create_task(flight.run("acme", work))
    staying = asyncio.create_task(flight.run("acme", work))
    await settle()
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert work.cancelled == 0
    assert len(flight.running()) == 1
    # A caller arriving now still joins the run under way.
    late = asyncio.create_task(flight.run("acme", work))
    await settle()
    work.release.set()
    assert await within(staying) == "done"
    assert await within(late) == "done"
    assert (work.runs, work.finished, work.cancelled) == (1, 1, 0)


async def test_the_work_finishes_when_every_caller_gave_up() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    work = Work("done")
    caller = asyncio.create_task(flight.run("acme", work))
    await settle()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    (running,) = flight.running()
    work.release.set()
    assert await within(running) == "done"
    assert work.finished == 1


async def test_an_error_nobody_waits_for_is_not_reported_as_unretrieved() -> None:
    with loop_errors() as reported:
        flight: SingleFlight[str, object] = SingleFlight()
        work = Work(error=RuntimeError("boom"))
        caller = asyncio.create_task(flight.run("acme", work))
        await settle()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        del caller
        work.release.set()
        await settle()
        assert flight.running() == []
        gc.collect()
    assert work.finished == 1
    assert reported == []


async def test_a_run_cancelled_itself_cancels_its_callers_and_is_forgotten() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    work = Work("done")
    callers = [asyncio.create_task(flight.run("acme", work)) for _ in range(2)]
    await settle()
    (running,) = flight.running()
    with loop_errors() as reported:
        running.cancel()
        outcomes = await within(asyncio.gather(*callers, return_exceptions=True))
        await settle()
    assert reported == []
    assert [type(outcome) for outcome in outcomes] == [asyncio.CancelledError] * 2
    assert work.cancelled == 1
    assert flight.running() == []
    work.release.set()
    assert await within(flight.run("acme", work)) == "done"
    assert work.runs == 2


async def test_nothing_is_remembered_once_a_run_ends() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    work = Work("done")
    work.release.set()
    assert await flight.run("acme", work) == "done"
    await settle()
    assert flight.running() == []
    assert await flight.run("acme", work) == "done"
    assert work.runs == 2
    failing = Work(error=ValueError("once"))
    failing.release.set()
    for _ in range(2):
        with pytest.raises(ValueError, match="once"):
            await flight.run("acme", failing)
    assert failing.runs == 2
    await settle()
    assert flight.running() == []


async def test_running_lists_the_runs_under_way() -> None:
    flight: SingleFlight[str, object] = SingleFlight()
    assert flight.running() == []
    work = Work("done")
    callers = [asyncio.create_task(flight.run("acme", work)) for _ in range(2)]
    await settle()
    (task,) = flight.running()
    assert not task.done()
    work.release.set()
    await within(asyncio.gather(*callers))
    await settle()
    assert flight.running() == []
    assert task.done()
    assert task.result() == "done"
