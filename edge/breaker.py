"""A circuit breaker per cloud target, so that a dead target costs nothing after a few failures.

Without it every escalated request would wait for a connection attempt (or a whole deadline) on
a target that is down, and the edge's latency would follow the worst target. After `failures`
failures in a row the breaker opens and the target is skipped; after `cooldown_s` one trial call
is let through (half-open): its success closes the breaker, its failure opens it again for
another cooldown. The breaker only keeps state; the caller decides what counts as a failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Closed -> open after `failures` failures in a row -> half-open (one trial) after cooldown.

    Thread-safe; `clock` is injectable for tests (seconds, monotonic).
    """

    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check(failures, cooldown_s)
        self._failures_to_open = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._failures = 0  # consecutive failures while closed
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cooldown has passed reads half_open."""
        with self._lock:
            self._maybe_half_open()
            return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far (0 after a success)."""
        with self._lock:
            return self._failures

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open state only one trial at a time."""
        with self._lock:
            self._maybe_half_open()
            if self._state == "closed":
                return True
            if self._state == "half_open" and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> bool:
        """A call succeeded: close and reset the count. True when this closed an open breaker."""
        with self._lock:
            was_closed = self._state == "closed"
            self._state = "closed"
            self._failures = 0
            self._trial_in_flight = False
            return not was_closed

    def record_failure(self) -> bool:
        """A call failed: count it, open at the threshold. True when this (re)opened the breaker."""
        with self._lock:
            self._maybe_half_open()
            if self._state == "open":  # a late answer of a call sent before the breaker opened
                return False
            self._failures += 1
            if self._state == "half_open" or self._failures >= self._failures_to_open:
                self._state = "open"
                self._opened_at = self._clock()
                self._trial_in_flight = False
                return True
            return False

    def release(self) -> None:
        """A call ended with no verdict (cancelled, overloaded): a half-open trial may go again."""
        with self._lock:
            self._trial_in_flight = False

    def reconfigure(self, failures: int, cooldown_s: float) -> None:
        """New thresholds, applied at once (an open breaker's cooldown counts from its opening)."""
        _check(failures, cooldown_s)
        with self._lock:
            self._failures_to_open = failures
            self._cooldown_s = cooldown_s

    def _maybe_half_open(self) -> None:
        if self._state == "open" and self._clock() - self._opened_at >= self._cooldown_s:
            self._state = "half_open"
            self._trial_in_flight = False


def _check(failures: int, cooldown_s: float) -> None:
    if failures < 1:
        raise ValueError(f"failures must be at least 1, not {failures}")
    if cooldown_s <= 0:
        raise ValueError(f"cooldown_s must be positive, not {cooldown_s}")
