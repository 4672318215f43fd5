"""The `pacsmigrate` command line: parse, build config, call the library, print."""

from __future__ import annotations

import logging
import sys
import warnings

import click

from .check import check
from .cleanup import cleanup
from .index import index
from .locate import locate
from .migrate import migrate, status
from .plan import plan
from .policy import policy
from .rebuild import rebuild_cmd
from .replicate import replicate_cmd
from .retrieve import get, restore_cmd
from .synth import synth
from .verify import verify


@click.group()
@click.version_option(package_name="pacsmigrate")
@click.option("-v", "--verbose", count=True,
              help="Log what happens (-v: objects and retries, -vv: debug) to stderr. Logs "
                   "name object keys and counts, never source paths, names or UIDs.")
def main(verbose: int) -> None:
    """Migrate PACS archives into object storage, resumably, with a RIS index."""
    # pydicom's warnings and log lines can quote element values (patient data). The command
    # line is a process of our own: silence them in all of it (the library does so only
    # while it reads a header, header.py, so a process that imports it keeps them).
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    if verbose:
        logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose > 1 else
                            logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # Third-party debug logs can quote request bodies and paths: keep them quiet.
        for noisy in ("botocore", "aiobotocore", "aiohttp", "urllib3", "asyncio", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


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

__all__ = ["main"]
