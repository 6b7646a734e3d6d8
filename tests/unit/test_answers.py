"""The tenant directory's cache of answers: ttl, bound, and what forgetting reports."""

from __future__ import annotations

import time

import pytest

from dbrouter.settings import NO_OVERRIDES
from dbrouter.tenancy.directory import Answers


def test_an_answer_is_known_until_its_ttl_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    answers = Answers(10, ttl=5.0)
    answers.put("acme", NO_OVERRIDES)
    answers.put("ghost", None)
    assert answers.get("acme") == (True, NO_OVERRIDES)
    assert answers.get("ghost") == (True, None)  # known not to exist
    assert answers.get("other") == (False, None)
    now[0] += 4.9
    assert answers.get("acme") == (True, NO_OVERRIDES)
    now[0] += 0.1
    assert answers.get("acme") == (False, None)
    assert len(answers) == 1  # the expired one is gone


def test_the_oldest_answers_go_first_past_the_bound() -> None:
    answers = Answers(3, ttl=60.0)
    for tenant in ("a", "b", "c"):
        answers.put(tenant, NO_OVERRIDES)
    answers.put("a", NO_OVERRIDES)  # answered again: the youngest now
    answers.put("d", NO_OVERRIDES)
    assert [answers.get(t)[0] for t in ("a", "b", "c", "d")] == [True, False, True, True]
    assert len(answers) == 3


def test_expired_answers_are_dropped_as_new_ones_come(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    answers = Answers(100, ttl=1.0)
    for index in range(50):
        answers.put(f"t{index}", None)
    now[0] += 2.0
    answers.put("fresh", NO_OVERRIDES)
    assert len(answers) == 1


def test_forgetting_tells_whether_a_fresh_tenant_was_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    answers = Answers(10, ttl=1.0)
    answers.put("found", NO_OVERRIDES)
    answers.put("missing", None)
    answers.put("stale", NO_OVERRIDES)
    assert answers.pop("missing") is False
    assert answers.pop("found") is True
    assert answers.pop("found") is False
    now[0] += 1.0
    assert answers.pop("stale") is False
