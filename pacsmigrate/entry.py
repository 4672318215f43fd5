"""The command's entry point: signals handled from the first instant, then the CLI.

Importing the command line takes about half a second; a Ctrl-C or SIGTERM in that time
used to print an import traceback (or, for SIGTERM, end the process without a word).
Until a command runs, nothing has started, so either simply exits: 130 for Ctrl-C, 143
for SIGTERM, with the line a command prints when interrupted.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd stopping a unit, `kill`): stop as on Ctrl-C; exit status 143."""


LINES = {signal.SIGINT: "interrupted: re-run the same command to resume",
         signal.SIGTERM: "terminated: re-run the same command to resume"}


def _before_start(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write(LINES[signal.Signals(signum)] + "\n")
    raise SystemExit(128 + signum)


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGINT, _before_start)
    signal.signal(signal.SIGTERM, _before_start)
    from .cli import main as cli

    # From here each command's handle_errors turns these into its one line and exit status;
    # inside asyncio.run a SIGTERM cancels the run as Ctrl-C does (cli.common.run_main).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminated)
    cli()
