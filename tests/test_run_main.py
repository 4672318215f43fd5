"""run_main's signals, in the process: the first cancels the run and is raised once it has
settled; the handlers from before come back after a run that was not stopped."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from pacsmigrate.cli.common import run_main
from pacsmigrate.entry import Terminated
from pacsmigrate.errors import PacsMigrateError


@pytest.fixture(autouse=True)
def handlers() -> object:
    """The handlers the CLI's entry point installs, restored after each test."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


async def done() -> str:
    return "done"


async def failing() -> None:
    raise PacsMigrateError("the store said no")


def test_the_handlers_from_before_come_back_after_a_run_done_or_failed() -> None:
    assert run_main(done()) == "done"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(PacsMigrateError):
        run_main(failing())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler


@pytest.mark.parametrize(("sig", "raised"), [(signal.SIGINT, KeyboardInterrupt),
                                             (signal.SIGTERM, Terminated)])
def test_the_first_signal_cancels_the_run_which_settles_then_ends_in_it(
        sig: int, raised: type[BaseException]) -> None:
    settled: list[str] = []

    async def run() -> None:
        try:
            os.kill(os.getpid(), sig)
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # what is in flight ends and is committed
            settled.append("committed")
            raise

    with pytest.raises(raised) as caught:
        run_main(run())
    assert caught.type is raised
    assert settled == ["committed"]
    # Stopped: the run's handler stays until the process exits (a second signal ends it
    # at once; see tests/functional/test_signals.py).
    assert signal.getsignal(sig) is not signal.default_int_handler
