"""Where the command line's log lines go: stderr with -v, a JSON-lines file with --log-file,
and the stats lines of unattended runs."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

NOISY = ("botocore", "aiobotocore", "aiohttp", "urllib3", "asyncio", "s3transfer", "azure")


class JsonLines(logging.Formatter):
    """One JSON object a line: time (UTC, ms), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        doc = {"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info and record.levelno >= logging.ERROR:
            doc["error"] = repr(record.exc_info[1])
        return json.dumps(doc, ensure_ascii=True)


def configure(verbose: int, log_file: Path | None) -> None:
    """-v: INFO (-vv: DEBUG) to stderr; --log-file: INFO (DEBUG with -vv) as JSON lines."""
    ours = logging.getLogger("pacsmigrate")
    level = logging.DEBUG if verbose > 1 else logging.INFO
    if verbose:
        logging.basicConfig(stream=sys.stderr, level=level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log_file is not None:
        # Opened at its first line: a command may refuse the path first (migrate: inside a
        # source, which is never written to). Whether it can be written is asked now.
        target = log_file if log_file.exists() else log_file.parent
        if not os.access(target, os.W_OK):
            raise click.BadParameter(f"{log_file} cannot be written", param_hint="--log-file")
        handler = logging.FileHandler(log_file, encoding="utf-8", delay=True)
        handler.setFormatter(JsonLines())
        ours.addHandler(handler)
        ours.setLevel(level)
        if not verbose:  # warnings still reach the terminal, as without a log file
            shown = logging.StreamHandler(sys.stderr)
            shown.setLevel(logging.WARNING)
            ours.addHandler(shown)
    if verbose or log_file is not None:
        # Third-party debug logs can quote request bodies and paths: keep them quiet.
        for noisy in NOISY:
            logging.getLogger(noisy).setLevel(logging.WARNING)


def info_to_stderr(name: str = "pacsmigrate.stats") -> None:
    """A logger's INFO lines on stderr, timestamped (a run's stats lines, a server's access
    lines), when -v does not show them already (a stderr that is a file or a journal)."""
    stats = logging.getLogger(name)
    stats.setLevel(logging.INFO)
    if logging.getLogger().handlers:  # -v: the root's stderr handler prints them
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    stats.addHandler(handler)


def log_files() -> list[Path]:
    """The files --log-file set up (configure)."""
    return [Path(h.baseFilename) for h in logging.getLogger("pacsmigrate").handlers
            if isinstance(h, logging.FileHandler)]
