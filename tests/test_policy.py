"""Request policy: token buckets on a fake clock, AIMD, retries by cause, giving up."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest
from conftest import run
from helpers import cli_default_transfer

from pacsmigrate.backends.policy import (
    THROTTLE,
    TRANSIENT,
    UNREACHED,
    AdaptiveLimit,
    Cause,
    RequestPolicy,
    RetryConfig,
    TokenBucket,
)
from pacsmigrate.backends.retry import policy_for


class FakeClock:
    """Time that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def test_token_bucket_caps_rate() -> None:
    clock = FakeClock()

    async def go() -> None:
        bucket = TokenBucket(10, burst=10, clock=clock, sleep=clock.sleep)
        for _ in range(30):
            await bucket.take(1)

    run(go())
    # 10 tokens at once, then 20 more at 10/s: two seconds of waiting, not less.
    assert clock.now == pytest.approx(2.0)


def test_token_bucket_large_takes_wait_for_their_whole_size() -> None:
    clock = FakeClock()

    async def go() -> None:
        bucket = TokenBucket(1_000_000, clock=clock, sleep=clock.sleep)  # 1 MB/s
        for _ in range(4):
            await bucket.take(4_000_000)  # 4 MB parts

    run(go())
    # 16 MB at 1 MB/s, the first MB was the burst: the last part starts after 15 s, not
    # before it was paid for (a hard cap holds up to the run's last request).
    assert clock.now == pytest.approx(15.0)


def test_a_run_without_bwlimit_puts_no_cap_on_bytes() -> None:
    """The policy a run builds from the CLI's defaults has no bucket between a body and the
    store (nothing to wait for, whatever the machine's speed); --bwlimit puts one at its rate.
    (tests/functional/test_faults_caps.py: a capped run takes at least bytes / rate.)"""
    defaults = cli_default_transfer()
    free = policy_for(defaults)
    assert free.bandwidth is None and free.requests is None
    capped = policy_for(replace(defaults, bwlimit=2 * 2**20))
    assert capped.bandwidth is not None and capped.bandwidth.rate == 2 * 2**20


def test_aimd_halves_once_per_cooldown_and_climbs_back() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(16, clock=clock, cooldown=1.0)
    limit.throttled()
    limit.throttled()  # same burst of 503s: counted once
    assert limit.limit == 8 and limit.decreases == 1
    clock.now = 2.0
    limit.throttled()
    assert limit.limit == 4 and limit.lowest == 4
    for _ in range(200):
        limit.succeeded()
    assert limit.limit == 16  # additive increase back to the maximum, never beyond


def test_aimd_bounds_requests_in_flight() -> None:
    limit = AdaptiveLimit(4)
    limit.throttled()  # now 2
    peak = 0

    async def worker() -> None:
        nonlocal peak
        await limit.acquire()
        peak = max(peak, limit.in_flight)
        await asyncio.sleep(0.01)
        await limit.release()

    async def go() -> None:
        await asyncio.gather(*(worker() for _ in range(10)))

    run(go())
    assert peak == 2


class Flaky(Exception):
    def __init__(self, kind: str) -> None:
        self.kind = kind


def _classify(exc: BaseException) -> Cause | None:
    if isinstance(exc, Flaky) and exc.kind in (THROTTLE, TRANSIENT, UNREACHED):
        return Cause(exc.kind, f"{exc.kind} fault")
    return None


def test_retries_count_causes_and_slow_down_on_throttle() -> None:
    clock = FakeClock()
    policy = RequestPolicy(concurrency=8, clock=clock, sleep=clock.sleep, rng=random.Random(1))
    failures = [Flaky(THROTTLE), Flaky(TRANSIENT), Flaky(THROTTLE)]

    async def request() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    assert run(policy.run(request, classify=_classify)) == "ok"
    assert policy.stats.retries == {"throttle fault": 2, "transient fault": 1}
    assert policy.stats.requests == 4
    assert policy.limit.decreases >= 1 and policy.limit.limit < 8
    assert len(clock.slept) == 3 and all(0 <= s <= 20 for s in clock.slept)


def test_permanent_errors_are_not_retried_and_attempts_are_bounded() -> None:
    clock = FakeClock()
    policy = RequestPolicy(concurrency=2, retry=RetryConfig(max_attempts=3), clock=clock,
                           sleep=clock.sleep)
    calls = 0

    async def denied() -> None:
        nonlocal calls
        calls += 1
        raise Flaky("permanent")

    with pytest.raises(Flaky):
        run(policy.run(denied, classify=_classify))
    assert calls == 1

    async def always_busy() -> None:
        nonlocal calls
        calls += 1
        raise Flaky(THROTTLE)

    calls = 0
    with pytest.raises(Flaky):
        run(policy.run(always_busy, classify=_classify))
    assert calls == 3 and policy.stats.gave_up == 1
    assert policy.limit.in_flight == 0  # slots are given back on every path


def test_an_unreachable_store_is_given_up_on_quickly_until_it_has_answered() -> None:
    """Before any answer, "cannot reach the store" is tried 3 times (a wrong endpoint is said
    in about a second); once the store has answered, a run's attempts apply to it."""
    clock = FakeClock()
    policy = RequestPolicy(concurrency=2, retry=RetryConfig(max_attempts=10), clock=clock,
                           sleep=clock.sleep)
    calls = 0
    outcomes: list[str] = []

    async def request() -> str:
        nonlocal calls
        calls += 1
        kind = outcomes.pop(0)
        if kind != "ok":
            raise Flaky(kind)
        return kind

    outcomes[:] = [UNREACHED] * 10
    with pytest.raises(Flaky):
        run(policy.run(request, classify=_classify))
    assert calls == 3 and not policy.answered
    outcomes[:] = [TRANSIENT] * 5 + ["ok"]  # timeouts and 500s keep a run's attempts
    calls = 0
    assert run(policy.run(request, classify=_classify)) == "ok" and calls == 6
    outcomes[:] = [UNREACHED] * 6 + ["ok"]  # it answered once: an outage is ridden out
    calls = 0
    assert run(policy.run(request, classify=_classify)) == "ok" and calls == 7


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    policy = RequestPolicy(concurrency=1, retry=RetryConfig(base_delay=0.5, max_delay=4.0),
                           rng=random.Random(7))
    samples = [[policy.backoff(a) for _ in range(200)] for a in (1, 2, 3, 6)]
    assert max(samples[0]) <= 0.5 and max(samples[1]) <= 1.0 and max(samples[2]) <= 2.0
    assert max(samples[3]) <= 4.0 and max(samples[3]) > 2.0  # capped, but larger
    assert min(samples[0]) < 0.1  # full jitter reaches near zero
