"""The shared test helpers in tests/conftest.py behave as their callers rely on."""

from __future__ import annotations

import time

import pytest

from tests.conftest import eventually


def test_eventually_returns_the_first_truthy_value() -> None:
    calls = iter([None, 0, "", [], {"ready": True}])
    assert eventually(lambda: next(calls), timeout=5, interval=0.001) == {"ready": True}


def test_eventually_fails_with_the_message_after_the_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"after 0.2s: port 1 never opened"):
        eventually(lambda: False, timeout=0.2, interval=0.01, message="port 1 never opened")
    assert 0.2 <= time.monotonic() - t0 < 2


def test_eventually_message_is_computed_only_on_failure() -> None:
    seen: list[int] = []
    assert eventually(lambda: 1, message=lambda: str(seen.append(1))) == 1
    assert seen == []
    with pytest.raises(pytest.fail.Exception, match="log: boom"):
        eventually(lambda: None, timeout=0.05, interval=0.01, message=lambda: "log: boom")


def test_eventually_checks_once_more_at_the_deadline() -> None:
    # A check that becomes true only after the deadline passed (a slow machine) is still seen.
    t0 = time.monotonic()
    assert eventually(lambda: time.monotonic() - t0 >= 0.1, timeout=0.1, interval=0.25) is True


def test_eventually_lets_exceptions_from_the_check_propagate() -> None:
    def check() -> bool:
        raise KeyError("not a retry condition")

    with pytest.raises(KeyError):
        eventually(check, timeout=5)
