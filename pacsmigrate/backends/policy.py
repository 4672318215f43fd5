"""How every backend request is paced and retried: backoff with jitter, AIMD, rate caps."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("pacsmigrate.store")
TROUBLE_EVERY = 60.0  # seconds between two store-trouble warnings

THROTTLE = "throttle"
TRANSIENT = "transient"
UNREACHED = "unreached"  # the request never reached the store (refused, no route, no name)
# Before the store has answered once, a request that cannot reach it is tried this often:
# a wrong or dead endpoint is said in about a second, not after a run's ten attempts.
FIRST_ATTEMPTS = 3

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class Cause:
    """Why a request failed in a way worth retrying: kind (throttle/transient) and a label."""

    kind: str
    label: str


# A backend's verdict on an exception: a retryable Cause, or None to give up at once.
Classify = Callable[[BaseException], Cause | None]


@dataclass(frozen=True)
class RetryConfig:
    """Exponential backoff with full jitter (AWS's recommended scheme)."""

    max_attempts: int = 10
    base_delay: float = 0.2
    max_delay: float = 20.0


class TokenBucket:
    """A leaky bucket with an injectable clock, so tests control time (after s3transfer).

    A hard cap: a taker waits until the bucket holds its whole amount, so by any moment at
    most `burst + rate * elapsed` has been taken. A take larger than the burst (one 16 MiB
    part under a 1 MiB/s cap) waits for all of it; the wait is its own, spent at once.
    """

    def __init__(self, rate: float, *, burst: float | None = None, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self.clock = clock
        self.sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def take(self, amount: float) -> None:
        async with self._lock:  # first come, first served
            self._refill()
            deficit = amount - self._tokens
            if deficit > 0:
                # One sleep for the whole deficit, then exactly that many tokens earned (even
                # above the burst: they are spent at once), so rounding cannot leave a
                # deficit too small to ever sleep off.
                await self.sleep(deficit / self.rate)
                self._last = self.clock()
                self._tokens = amount
            self._tokens -= amount


class AdaptiveLimit:
    """Requests in flight, halved on throttling and grown back by one per window (AIMD).

    A decrease happens at most once per `cooldown` seconds, so one burst of 503s counts once.
    """

    def __init__(self, maximum: int, *, minimum: int = 1, cooldown: float = 1.0,
                 clock: Clock = time.monotonic) -> None:
        self.maximum = maximum
        self.minimum = max(1, min(minimum, maximum))
        self.limit = float(maximum)
        self.in_flight = 0
        self.cooldown = cooldown
        self.clock = clock
        self.decreases = 0
        self.lowest = maximum
        self._last_decrease = -cooldown
        self._changed = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1

    async def release(self) -> None:
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    def throttled(self) -> None:
        now = self.clock()
        if now - self._last_decrease >= self.cooldown:
            self.limit = max(float(self.minimum), self.limit / 2)
            self._last_decrease = now
            self.decreases += 1
            self.lowest = min(self.lowest, int(self.limit))

    def succeeded(self) -> None:
        if self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + 1 / self.limit)


@dataclass
class PolicyStats:
    """What the report counts: retries by cause, throttling, the lowest concurrency reached."""

    retries: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    gave_up: int = 0


class RequestPolicy:
    """Runs one request at a time through: rate caps, the adaptive limit, then retries."""

    def __init__(self, *, concurrency: int, retry: RetryConfig | None = None,
                 requests_per_second: float | None = None,
                 bytes_per_second: float | None = None, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep, rng: random.Random | None = None) -> None:
        self.retry = retry or RetryConfig()
        self.limit = AdaptiveLimit(concurrency, clock=clock)
        self.requests = (TokenBucket(requests_per_second, clock=clock, sleep=sleep)
                         if requests_per_second else None)
        self.bandwidth = (TokenBucket(bytes_per_second, clock=clock, sleep=sleep)
                          if bytes_per_second else None)
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.stats = PolicyStats()
        self._said_at = float("-inf")  # when store trouble was last shown (monotonic)
        self._unsaid = 0
        self.answered = False  # has the store answered anything yet (even an error)?

    def _say_trouble(self, label: str) -> None:
        """Store trouble reaches the terminal at once, without a -v: one warning, then at
        most one a minute with the count since (a storm of 503s is not a wall of lines)."""
        now = time.monotonic()
        self._unsaid += 1
        if now - self._said_at < TROUBLE_EVERY:
            return
        more = f" ({self._unsaid - 1:,} more retried since the last warning)" \
            if self._said_at > float("-inf") and self._unsaid > 1 else ""
        log.warning("store trouble: retrying a request after %s%s; the run goes on",
                    label, more)
        self._said_at, self._unsaid = now, 0

    def backoff(self, attempt: int) -> float:
        cap = min(self.retry.max_delay, self.retry.base_delay * 2 ** (attempt - 1))
        return self.rng.uniform(0, cap)

    def _attempts(self, cause: Cause) -> int:
        if cause.kind == UNREACHED and not self.answered:
            return min(self.retry.max_attempts, FIRST_ATTEMPTS)
        return self.retry.max_attempts

    async def run(self, request: Callable[[], Awaitable[T]], *, classify: Classify,
                  nbytes: int = 0) -> T:
        """Run request (a fresh coroutine per attempt) until it succeeds or must give up."""
        attempt = 0
        while True:
            attempt += 1
            if self.requests is not None:
                await self.requests.take(1)
            if self.bandwidth is not None and nbytes:
                await self.bandwidth.take(nbytes)
            await self.limit.acquire()
            try:
                self.stats.requests += 1
                result = await request()
            except Exception as exc:
                cause = classify(exc)
                if cause is None or cause.kind == THROTTLE:
                    self.answered = True
                if cause is None or attempt >= self._attempts(cause):
                    if cause is not None:
                        self.stats.gave_up += 1
                    raise
                if cause.kind == THROTTLE:
                    self.limit.throttled()
                self.stats.retries[cause.label] += 1
                log.info("retrying after %s (attempt %d of %d, %d requests in flight allowed)",
                         cause.label, attempt, self.retry.max_attempts, int(self.limit.limit))
                self._say_trouble(cause.label)
            else:
                self.answered = True
                self.limit.succeeded()
                return result
            finally:
                await self.limit.release()
            await self.sleep(self.backoff(attempt))
