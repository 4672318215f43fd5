"""What every command shares: error handling, option types, the state option."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from ..config import PROVIDERS, AzureOptions, Destination, S3Options, TransferConfig, parse_size
from ..entry import LINES, Terminated
from ..errors import PacsMigrateError, first_error
from ..ssec import ENV

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
DEFAULT_STATE = "pacsmigrate-state"


def quiet_gc() -> None:
    """Fewer garbage collector passes for a long run: a run allocates millions of short-lived
    objects (rows, headers, tasks) and almost no cycles, so the youngest generation is
    scanned every 50,000 allocations instead of 700, and what the imports made is left out
    of the scans altogether (gc.freeze)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def run_main(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, with Ctrl-C and SIGTERM handled by us, not by asyncio: the first one
    cancels the main task, so what is in flight is finished or abandoned and committed,
    and the run ends in KeyboardInterrupt (Terminated for SIGTERM) whatever the cancelling
    ended in. Another one, or one after the main task is over (the loop's teardown joins
    threads and closes connections, which can take seconds), stops the process at once
    with the command's line: asyncio's own handler would raise KeyboardInterrupt wherever
    the teardown happens to be, a finaliser included, where it is printed and lost."""
    stop = _Stop()
    try:
        before = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: the signals are someone else's
        return asyncio.run(main)

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        stop.loop, stop.task = asyncio.get_running_loop(), task
        try:
            return await main
        except BaseException:
            if stop.first is not None:  # whatever the cancelling ended in, it was the signal
                raise _ENDS[stop.first]() from None
            raise

    try:
        return asyncio.run(guarded())
    finally:
        if stop.first is None:  # not stopped (done or failed): the handlers from before;
            for sig, handler in before.items():  # a stopped run keeps _Stop until it exits
                signal.signal(sig, handler)


class _Stop:
    """The signal handler of a run (run_main)."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.loop is None or self.task is None:  # the loop is not running main yet
            raise _ENDS[signum]()
        if self.first is None and not self.task.done():
            self.first = signum
            self.loop.call_soon_threadsafe(self.task.cancel)
            return
        _stopped(signum)


_ENDS: dict[int, type[KeyboardInterrupt]] = {signal.SIGINT: KeyboardInterrupt,
                                             signal.SIGTERM: Terminated}


def handle_errors(fn: F) -> F:
    """Our errors become one clear line and exit status 2; Ctrl-C (130) and SIGTERM (143)
    say how to resume."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return fn(*args, **kwargs)
            except BaseExceptionGroup as group:  # from a task group inside the library
                raise first_error(group) from group
        except SystemExit as done:  # the command's own exit status (0, 1)
            _exiting(done.code if isinstance(done.code, int) else 1)
            raise
        except PacsMigrateError as exc:
            _exiting(2)
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except BrokenPipeError:  # `pacsmigrate status | head`: the reader has all it wanted
            _exiting(141)
            with contextlib.suppress(OSError):  # no flush at exit into the closed pipe
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except (OSError, sqlite3.Error) as exc:
            # A file the command was told to write (-o, --to, --report) that cannot be
            # written, and the like: said in a line, as our own errors are.
            _exiting(2)
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except Terminated:
            _stopped(signal.SIGTERM)
        except KeyboardInterrupt:
            _stopped(signal.SIGINT)
    return wrapper  # type: ignore[return-value]


def _stopped(signum: int) -> NoReturn:
    """Interrupted: say how to resume and end now. What the run had in flight is settled
    and committed; after a second Ctrl-C it may not be (threads left reading or writing,
    which a normal exit would wait for), and the state is safe then as after a kill."""
    _exiting(128 + signum)
    click.echo(LINES[signal.Signals(signum)], err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(128 + signum)


def _exiting(status: int) -> None:
    """The command is over (done, stopped and committed, or failed); what is left is the
    interpreter's exit (threads joined, files closed). A Ctrl-C or SIGTERM now stops at
    once, with the same status: the state is safe as after a kill. Once the threads are
    joined (atexit), the signals are held: the interpreter's last teardown resets their
    handlers, and a signal then would end the process by the signal, not its status."""
    def stop_now(sig: int, frame: Any) -> None:
        os._exit(status)

    # A run a second Ctrl-C stopped at once may leave a connection pool unclosed: asyncio
    # would report it at exit, after the line that says how the command ended.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_now)
    atexit.register(signal.pthread_sigmask, signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


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


def rate_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A bandwidth like 10MiB (per second); none when not given."""
    if value is None:
        return None
    return float(size_option(ctx, param, value))


SSE_C_OPTION = click.option(
    "--sse-c-key-file", type=click.Path(dir_okay=False), envvar=ENV, show_envvar=True,
    help="S3 SSE-C: encrypt (migrate) or read objects with your own 256-bit key from this "
         "file (32 bytes, hex or base64); needed by every command on them; never stored.")

B64_OPTION = click.option(
    "--b64", is_flag=True,
    help="SOURCE_PATH is the base64 of the path's exact bytes (the export's source_path_b64),"
         " looked up as is: for names the `\\xNN` text cannot tell apart.")


def store_options(fn: F) -> F:
    """Where the store is: --endpoint-url and, for S3, region, profile, addressing, provider."""
    for option in reversed([
        click.option("--endpoint-url", help="The store's address: an S3-compatible endpoint "
                     "(e.g. https://rgw.hospital.local:7480), or Azure's blob endpoint."),
        click.option("--provider", type=click.Choice(PROVIDERS),
                     help="S3 preset: aws (virtual-hosted), wasabi (its regional endpoint), "
                          "ceph, minio, other (need --endpoint-url; path style)."),
        click.option("--region", help="S3 region (default: the profile's, else us-east-1)."),
        click.option("--profile", help="AWS credentials profile (~/.aws/credentials)."),
        click.option("--addressing-style", type=click.Choice(["path", "virtual"]),
                     help="S3 URL style (default: the provider's; path for --endpoint-url)."),
        click.option("--sse", type=click.Choice(["AES256", "aws:kms"]),
                     help="S3 server-side encryption: AES256 (store-managed keys) or aws:kms."),
        click.option("--sse-kms-key-id", metavar="KEY",
                     help="The KMS key for --sse aws:kms (default: the account's S3 key)."),
        SSE_C_OPTION,
        click.option("--encryption-scope", metavar="NAME",
                     help="Azure: encrypt every blob with this encryption scope of the "
                          "account (a key it keeps under that name)."),
    ]):
        fn = option(fn)
    return fn


def destination(url: str, *, endpoint_url: str | None, provider: str | None,
                region: str | None, profile: str | None, addressing_style: str | None,
                sse: str | None = None, sse_kms_key_id: str | None = None,
                sse_c_key_file: str | None = None, encryption_scope: str | None = None
                ) -> Destination:
    """DEST with the store options applied (the provider's preset for S3); the customer key
    file is S3's SSE-C key or Azure's customer-provided key."""
    dest = Destination.parse(url, endpoint_url=endpoint_url)
    azure = dest.scheme == "az"
    return dest.with_s3(S3Options(
        region=region, profile=profile, addressing_style=addressing_style, provider=provider,
        sse=sse, sse_kms_key_id=sse_kms_key_id,
        sse_c_key_file=None if azure else sse_c_key_file)).with_azure(AzureOptions(
            encryption_scope, cpk_key_file=sse_c_key_file if azure else None))


def transfer_options(fn: F) -> F:
    """How requests go to the store: concurrency, part size, caps, retries, TLS."""
    for option in reversed([
        click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 256),
                     help="Objects and requests in flight (lowered on throttling)."),
        click.option("--part-size", default="16MiB", show_default=True, callback=size_option,
                     help="Size of each part of a multipart upload (objects above 16MiB); "
                          "raised as needed to stay within the store's 10,000 parts."),
        click.option("--max-requests-per-second", type=click.FloatRange(min=0, min_open=True),
                     help="Cap on requests per second to the store."),
        click.option("--bwlimit", callback=rate_option, metavar="RATE",
                     help="Cap on bytes sent per second, e.g. 50MiB."),
        click.option("--retries", default=10, show_default=True, type=click.IntRange(1, 100),
                     help="Attempts per request before the run stops."),
        click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(1),
                     help="Seconds without an answer before a request is retried."),
        click.option("--ca-bundle", type=click.Path(path_type=Path, exists=True, dir_okay=False),
                     help="PEM file of a private CA to trust (certificates are always checked)."),
    ]):
        fn = option(fn)
    return fn


def transfer_config(*, concurrency: int, part_size: int, max_requests_per_second: float | None,
                    bwlimit: float | None, retries: int, timeout: float,
                    ca_bundle: Path | None, checksum: str = "md5") -> TransferConfig:
    return TransferConfig(part_size=part_size, multipart_threshold=part_size,
                          concurrency=concurrency, max_attempts=retries, read_timeout=timeout,
                          max_requests_per_second=max_requests_per_second, bwlimit=bwlimit,
                          ca_bundle=ca_bundle, checksum=checksum)
