"""What every command shares: error handling, option types, the state option."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from ..config import parse_size
from ..errors import PacsMigrateError

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_STATE = "pacsmigrate-state"


def handle_errors(fn: F) -> F:
    """Our errors become one clear line and exit status 2; Ctrl-C says how to resume."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PacsMigrateError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: re-run the same command to resume", err=True)
            sys.exit(130)
    return wrapper  # type: ignore[return-value]


def size_option(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_size(value)
    except PacsMigrateError as exc:
        raise click.BadParameter(str(exc)) from None




def state_option(*, must_exist: bool = True) -> Callable[[F], F]:
    """--state DIR, the checkpoint directory every command reads."""
    return click.option(
        "--state", "state_dir", default=DEFAULT_STATE, show_default=True,
        type=click.Path(path_type=Path, exists=must_exist, file_okay=False),
        help="The migration's state directory.")
