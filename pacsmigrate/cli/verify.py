"""`verify`: does the store still hold what was committed, and do the sources still match?"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..access import open_migration
from ..config import TransferConfig
from ..paths import shown
from ..staterepair import REPAIR_FILE
from ..verify import VerifyConfig, VerifyResult
from ..verify import verify as run_verify
from .common import SSE_C_OPTION, handle_errors, run_main, state_option

SHOWN = 20  # damaged files named on the terminal (all of them in --report)


@click.command()
@state_option()
@click.option("--endpoint-url", help="Override the endpoint recorded in the state.")
@click.option("--deep", is_flag=True,
              help="Also read members back (range GETs) and compare blake3 with the index.")
@click.option("--sample", type=click.FloatRange(0, 100, min_open=True), metavar="PERCENT",
              help="With --deep/--source: check only this percent of the index rows.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Which rows --sample picks (the same seed picks the same rows).")
@click.option("--source", is_flag=True,
              help="Also re-hash the source files and look for files missing from the index.")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Objects and requests in flight.")
@click.option("--read-threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Source files re-hashed at once (--source).")
@click.option("--list/--no-list", "use_list", default=True, show_default=True,
              help="--no-list: HEAD each object (credentials without s3:ListBucket).")
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="Write the JSON report here.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars (default: when stderr is a terminal).")
@SSE_C_OPTION
@handle_errors
def verify(state_dir: Path, endpoint_url: str | None, deep: bool, sample: float | None,
           seed: int, source: bool, concurrency: int, read_threads: int, use_list: bool,
           report_path: Path | None, progress: bool | None,
           sse_c_key_file: str | None) -> None:
    """Check a migration without downloading whole objects.

    Always: every committed object is in the store with its recorded size and ETag, beside
    its manifest. Exit status: 0 when nothing is wrong (warnings such as a source file
    deleted after migration allowed), 1 when something is (listed, and in --report), 2 on
    an error that stopped the check.
    """
    cfg = VerifyConfig(concurrency=concurrency, read_threads=read_threads, use_list=use_list)

    replica: list[str] = []

    async def go() -> VerifyResult:
        async with open_migration(state_dir, endpoint_url=endpoint_url,
                                  transfer=TransferConfig(concurrency=concurrency),
                                  sse_c_key_file=sse_c_key_file) as opened:
            if (opened.cp.get_meta("config") or {}).get("replica_of"):
                replica.append("replica")
            return await run_verify(
                opened, deep=deep, sample=sample, seed=seed, source=source,
                progress=sys.stderr.isatty() if progress is None else progress,
                report=report_path, config=cfg)

    result = run_main(go())
    _print_summary(result, deep=deep, source=source, sample=sample, seed=seed,
                   replica=bool(replica))
    sys.exit(0 if result.ok else 1)


def _print_summary(r: VerifyResult, *, deep: bool, source: bool, sample: float | None,
                   seed: int, replica: bool = False) -> None:
    c = r.counts
    click.echo(f"objects: {c.objects:,} checked with their manifests ({c.listed:,} by LIST, "
               f"{c.heads:,} HEAD requests)")
    of = f" ({sample:g}% sample, seed {seed})" if sample is not None else ""
    if deep:
        click.echo(f"members: {c.members_checked:,} of {c.rows:,} read back and hashed{of}, "
                   f"{c.bytes_read / 1e6:,.1f} MB in {c.range_requests:,} range requests; "
                   f"unverified: {c.members_unverified:,}")
    if source:
        click.echo(f"sources: {c.sources_checked:,} of {c.rows:,} re-checked{of} "
                   f"({c.sources_bytes / 1e6:,.1f} MB hashed); {c.sources_walked:,} files "
                   "found walking the source roots")
    for f in r.findings:
        click.echo(("warning: " if f.warning else "") + str(f))
    listed = len(r.findings)
    if r.errors + r.warnings > listed:
        click.echo(f"... and {r.errors + r.warnings - listed:,} more (see --report)")
    if r.damaged:
        again = ("the next `replicate` to this replica copies their objects again" if replica
                 else "the next `migrate` stores them again")
        click.echo(f"damaged: {len(r.damaged):,} source files are behind these findings, "
                   f"listed in {REPAIR_FILE} of the state: {again} (then verify once more)")
        for path in r.damaged[:SHOWN]:
            click.echo(f"  {shown(path)}")
        if len(r.damaged) > SHOWN:
            click.echo(f"  ... and {len(r.damaged) - SHOWN:,} more")
    if r.ok:
        warnings = f"{r.warnings:,} warning{'' if r.warnings == 1 else 's'}"
        click.echo(f"OK: nothing wrong found ({warnings}) in {r.seconds:,.1f} s")
    else:
        kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(r.by_kind.items()))
        warned = f" and {r.warnings:,} warning{'' if r.warnings == 1 else 's'}" \
            if r.warnings else ""
        click.echo(f"FAILED: {r.errors:,} findings{warned} ({kinds}) in {r.seconds:,.1f} s")
