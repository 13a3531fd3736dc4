"""The circuit breaker's state machine, driven by a fake clock."""

from __future__ import annotations

import pytest

from edge.breaker import CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def opened(clock: FakeClock, failures: int = 3, cooldown_s: float = 10.0) -> CircuitBreaker:
    breaker = CircuitBreaker(failures, cooldown_s, clock=clock)
    for _ in range(failures):
        breaker.record_failure()
    assert breaker.state == "open"
    return breaker


def test_new_breaker_is_closed_and_allows_calls(clock: FakeClock) -> None:
    """A fresh breaker lets every call through."""
    breaker = CircuitBreaker(3, 10.0, clock=clock)
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(10))


def test_opens_after_n_failures_in_a_row(clock: FakeClock) -> None:
    """N-1 failures keep it closed; the N-th opens it and says so."""
    breaker = CircuitBreaker(3, 10.0, clock=clock)
    assert breaker.record_failure() is False
    assert breaker.record_failure() is False
    assert breaker.state == "closed"
    assert breaker.record_failure() is True
    assert breaker.state == "open"


def test_rejects_calls_while_open(clock: FakeClock) -> None:
    """Until the cooldown has passed, no call goes out."""
    breaker = opened(clock)
    clock.now += 9.9
    assert not breaker.allow()
    assert breaker.state == "open"


def test_allows_exactly_one_trial_after_cooldown(clock: FakeClock) -> None:
    """After the cooldown one trial call goes out; others wait for its verdict."""
    breaker = opened(clock)
    clock.now += 10.0
    assert breaker.state == "half_open"
    assert breaker.allow() is True
    assert breaker.allow() is False
    assert breaker.allow() is False
    assert breaker.state == "half_open"


def test_trial_success_closes(clock: FakeClock) -> None:
    """A successful trial closes the breaker and says so."""
    breaker = opened(clock)
    clock.now += 10.0
    assert breaker.allow()
    assert breaker.record_success() is True
    assert breaker.state == "closed"
    assert breaker.failures == 0
    assert all(breaker.allow() for _ in range(3))


def test_trial_failure_reopens_with_a_new_cooldown(clock: FakeClock) -> None:
    """A failed trial opens the breaker again, for a full cooldown from now."""
    breaker = opened(clock)
    clock.now += 10.0
    assert breaker.allow()
    assert breaker.record_failure() is True
    assert breaker.state == "open"
    clock.now += 9.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


def test_released_trial_lets_another_trial_through(clock: FakeClock) -> None:
    """A trial that ends with no verdict (cancelled) does not block the breaker forever."""
    breaker = opened(clock)
    clock.now += 10.0
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()
    assert not breaker.allow()


def test_success_resets_the_failure_count(clock: FakeClock) -> None:
    """Failures must come in a row: a success in between starts the count again."""
    breaker = CircuitBreaker(3, 10.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.record_success() is False  # it was closed: nothing to announce
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"


def test_late_failure_while_open_does_not_extend_the_cooldown(clock: FakeClock) -> None:
    """A call sent before the breaker opened may fail later; the cooldown still ends on time."""
    breaker = opened(clock)
    clock.now += 5.0
    assert breaker.record_failure() is False
    clock.now += 5.0
    assert breaker.allow()


def test_reconfigure_applies_at_once(clock: FakeClock) -> None:
    """A lower threshold and a shorter cooldown take effect on the next failure and check."""
    breaker = CircuitBreaker(5, 60.0, clock=clock)
    breaker.record_failure()
    breaker.reconfigure(failures=2, cooldown_s=1.0)
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 1.0
    assert breaker.allow()


@pytest.mark.parametrize(("failures", "cooldown_s"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_rejects_nonsense_parameters(failures: int, cooldown_s: float) -> None:
    """A threshold below 1 or a cooldown that is not positive is a ValueError."""
    with pytest.raises(ValueError):
        CircuitBreaker(failures, cooldown_s)
