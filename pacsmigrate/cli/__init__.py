"""The `pacsmigrate` command line: parse, build config, call the library, print."""

from __future__ import annotations

import click

from .index import index
from .migrate import migrate, status
from .synth import synth


@click.group()
@click.version_option(package_name="pacsmigrate")
def main() -> None:
    """Migrate PACS archives into object storage, resumably, with a RIS index."""


# One line per command; each lives in its own module.
main.add_command(migrate)
main.add_command(status)
main.add_command(index)
main.add_command(synth)

__all__ = ["main"]
