"""The `pacsmigrate` command line: parse, build config, call the library, print."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import click

from .check import check
from .cleanup import cleanup
from .index import index
from .locate import locate
from .logs import configure
from .migrate import migrate
from .plan import plan
from .policy import policy
from .rebuild import rebuild_cmd
from .replicate import replicate_cmd
from .retrieve import get, restore_cmd
from .serve import serve
from .status import status
from .synth import synth
from .verify import verify


@click.group(context_settings={"auto_envvar_prefix": "PACSMIGRATE"})
@click.version_option(package_name="pacsmigrate", allow_from_autoenv=False)  # not PACSMIGRATE_VERSION
@click.option("-v", "--verbose", count=True,
              help="Log what happens (-v: objects and retries, -vv: debug) to stderr. Logs "
                   "name object keys and counts, never source paths, names or UIDs.")
@click.option("--log-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Also log to this file, one JSON object a line (time, level, logger, "
                   "message), appended to; INFO and up (DEBUG with -vv).")
def main(verbose: int, log_file: Path | None) -> None:
    """Migrate PACS archives into object storage, resumably, with a RIS index.

    Every option can also come from the environment: PACSMIGRATE_<COMMAND>_<OPTION>, the
    option as typed, e.g. PACSMIGRATE_MIGRATE_CONCURRENCY=16, PACSMIGRATE_MIGRATE_STATE=DIR,
    PACSMIGRATE_INDEX_EXPORT_FORMAT=csv or PACSMIGRATE_LOG_FILE=/var/log/pacsmigrate.jsonl
    (options of the command line win; a repeatable option's values are split at spaces).
    """
    # pydicom's warnings and log lines can quote element values (patient data). The command
    # line is a process of our own: silence them in all of it (the library does so only
    # while it reads a header, header.py, so a process that imports it keeps them).
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    configure(verbose, log_file)


# One line per command; each lives in its own module.
main.add_command(migrate)
main.add_command(check)
main.add_command(status)
main.add_command(replicate_cmd)
main.add_command(plan)
main.add_command(policy)
main.add_command(index)
index.add_command(rebuild_cmd)
main.add_command(synth)
main.add_command(locate)
main.add_command(get)
main.add_command(restore_cmd)
main.add_command(verify)
main.add_command(cleanup)
main.add_command(serve)


def _env_names(command: click.Command, prefix: str) -> None:
    """PACSMIGRATE_<COMMAND>_<OPTION> named after the option as typed (--state: _STATE,
    --json: _JSON), not only after its parameter (state_dir, as_json), which click's own
    names follow and which keep working."""
    for param in command.params:
        if not isinstance(param, click.Option) or param.envvar or param.name is None \
                or not param.allow_from_autoenv:
            continue
        longest = max((o for o in param.opts if o.startswith("--")), key=len, default=None)
        flag = longest[2:].replace("-", "_").upper() if longest else param.name.upper()
        if flag != param.name.upper():
            param.envvar = [f"{prefix}_{flag}", f"{prefix}_{param.name.upper()}"]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            _env_names(sub, f"{prefix}_{name.replace('-', '_').upper()}")


_env_names(main, "PACSMIGRATE")

__all__ = ["main"]
