"""`migrate` and `status`: run a migration, and show what is done and what remains."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..config import MigrateConfig, inside
from ..costs import PriceTable
from ..errors import ConfigError
from ..filters import Filters
from ..pack import HINT_SIZE
from ..pipeline import migrate as run_migrate
from ..retention import Retention, RetentionMap, parse_classes
from ..sample import parse as parse_sample
from ..shard import Shard
from ..stats import Stats
from ..tiers import TierPolicy
from ..workers import migrate_on_dask
from .common import (
    destination,
    handle_errors,
    quiet_gc,
    run_main,
    size_option,
    state_option,
    store_options,
    transfer_config,
    transfer_options,
)
from .logs import info_to_stderr, log_files

DEFAULT_STATS_INTERVAL = 60.0  # seconds, when stderr is not a terminal


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="SOURCE... DEST")
@state_option(must_exist=False)
@store_options
@click.option("--dry-run", is_flag=True,
              help="Read, hash and parse everything and plan the run; write nothing (the "
                   "store is only listed, to check the credentials and the bucket).")
@click.option("--sample", metavar="PCT",
              help="With --dry-run: list the whole tree but read only about PCT of it (whole "
                   "study or day folders, e.g. 5%), and estimate the tree's bytes, objects, "
                   "requests, time and cost from it; the upload rate is measured with a few "
                   "probe objects, deleted at once (not with --offline).")
@click.option("--offline", is_flag=True,
              help="With --dry-run: do not contact the store at all (plan as a first run).")
@click.option("--bundle-size", default="256MiB", show_default=True, callback=size_option,
              help="Largest bundle; a bigger study is split into several.")
@click.option("--large-file", default="64MiB", show_default=True, callback=size_option,
              help="Files above this become objects of their own.")
@click.option("--pack", default="0", show_default=True, callback=size_option, metavar="SIZE",
              help="Studies smaller than SIZE share objects of up to SIZE (e.g. 8MiB): far "
                   "fewer requests and objects for archives of small studies; a study that "
                   "shares an object cannot be deleted or re-tiered alone. 0: one object per "
                   "study.")
@transfer_options
@click.option("--read-threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Source files read at once (more hide NAS latency).")
@click.option("--read-process", "read_process", type=click.Choice(["auto", "on", "off"]),
              default="auto", show_default=True,
              help="Walk and read the sources in a second process, so the run uses two "
                   "cores (small files: up to ~1.3x the files/s); auto: on when the run "
                   "may use two CPUs or more.")
@click.option("--memory", default="512MiB", show_default=True, callback=size_option,
              help="Memory held by open bundles and uploads in flight: file bytes, "
                   "and ~1-2 KiB a file for its records.")
@click.option("--checksum", type=click.Choice(["auto", "md5", "crc32"]), default="auto",
              show_default=True,
              help="What the store checks each bundle's bytes with: md5 (Content-MD5, every "
                   "S3 store), crc32 (AWS, MinIO, SeaweedFS, recent Ceph; far cheaper), or "
                   "auto: crc32 if the pre-flight sees the store refuse a wrong one, else md5.")
@click.option("--storage-class", metavar="CLASS",
              help="Store every object in this class (S3: STANDARD, STANDARD_IA, "
                   "INTELLIGENT_TIERING, GLACIER_IR, GLACIER, DEEP_ARCHIVE; Azure: Hot, Cool, "
                   "Cold, Archive); with --tier-policy, the class of studies it does not "
                   "place (no StudyDate).")
@click.option("--tier-policy", metavar="POLICY",
              help="Class by study age, e.g. 0-180d=STANDARD,180d-5y=GLACIER_IR,"
                   "5y-=DEEP_ARCHIVE (d days, m months, y years).")
@click.option("--retain-years", type=click.IntRange(1, 100), metavar="N",
              help="S3 Object Lock: keep each study's objects undeletable until its "
                   "StudyDate + N years (today + N without a StudyDate); the bucket must "
                   "have object lock enabled.")
@click.option("--retention-map", type=click.Path(path_type=Path, dir_okay=False),
              metavar="CSV",
              help="Retention per study from the RIS: a CSV with a StudyInstanceUID or "
                   "AccessionNumber column and a years or class column; studies it does not "
                   "name get --retain-years (without it: no lock, and counted).")
@click.option("--retention-class", "retention_classes", multiple=True, metavar="NAME=YEARS",
              help="A class the map may name (repeatable; defaults inpatient=30, "
                   "outpatient=15).")
@click.option("--lock-mode", type=click.Choice(["GOVERNANCE", "COMPLIANCE"]),
              help="COMPLIANCE: nobody, not even the account's root, can shorten the lock. "
                   "[default: GOVERNANCE]")
@click.option("--legal-hold", is_flag=True, help="Also put a legal hold on every object.")
@click.option("--dedup/--no-dedup", default=True, show_default=True,
              help="Store each content (blake3) once: a file identical to one stored "
                   "already in this migration is indexed at the stored copy's bytes.")
@click.option("--compress", type=click.Choice(["zstd"]),
              help="Store DICOM files whose pixel data is uncompressed as zstd frames "
                   "(name.zst in the tar) where that is smaller; needs pacsmigrate[zstd]. "
                   "Files above --large-file (objects of their own) are stored as they are.")
@click.option("--prices", type=click.Path(path_type=Path, dir_okay=False),
              help="JSON price table for the dry run's cost estimate (default: AWS S3 "
                   "us-east-1 or Wasabi list prices; none for other stores).")
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="Write the JSON report here.")
@click.option("--shard", metavar="K/N",
              help="Migrate only slice K of N (K from 0) of the sources, the same on every "
                   "machine; run each slice with its own --state, then `index merge`.")
@click.option("--workers", type=click.IntRange(1, 1024), metavar="N",
              help="Run on N worker processes of this machine (Dask distributed; the way to "
                   "use every core): the run is cut into slices, one state each under "
                   "--state, merged into --state at the end.")
@click.option("--scheduler", metavar="ADDRESS",
              help="Run on an existing Dask cluster (tcp://HOST:8786); every worker must "
                   "reach the sources at the same paths.")
@click.option("--slice-states", "slice_states", type=click.Choice(["shared", "store"]),
              help="Where the slices of a run on workers keep their states: under --state "
                   "(shared: a path every worker reaches; default with --workers) or on each "
                   "worker, copied through the store (default with --scheduler). Fixed by "
                   "the run's first start.")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only files whose whole path matches (fnmatch, * also crosses /; "
                   "repeatable), e.g. '*/2015/*'. Left-out files are counted; a run "
                   "without the filter takes them.")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Leave out files whose whole path matches (repeatable), e.g. '*.tmp'.")
@click.option("--study-date-from", metavar="DATE",
              help="Only studies of this StudyDate or later (YYYYMMDD or YYYY-MM-DD); files "
                   "without a StudyDate are left out while a study date filter is given.")
@click.option("--study-date-to", metavar="DATE", help="Only studies of this StudyDate or "
              "earlier, e.g. the oldest studies first.")
@click.option("--min-age", metavar="AGE",
              help="Only files last modified at least AGE ago (30d, 6m, 5y): leaves what a "
                   "PACS may still be writing for a later run.")
@click.option("--max-age", metavar="AGE", help="Only files last modified at most AGE ago.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars (default: when stderr is a terminal).")
@click.option("--stats-interval", type=click.FloatRange(min=0), metavar="SECONDS",
              help="A stats line (files, MB, rates, retries) every SECONDS on stderr and in "
                   "--log-file; default 60 when stderr is not a terminal, else none; 0: none.")
@handle_errors
def migrate(paths: tuple[str, ...], state_dir: Path, endpoint_url: str | None,
            provider: str | None, region: str | None, profile: str | None,
            addressing_style: str | None, sse: str | None,
            sse_kms_key_id: str | None, sse_c_key_file: str | None,
            encryption_scope: str | None, dry_run: bool, sample: str | None, offline: bool,
            bundle_size: int, large_file: int, pack: int, read_threads: int,
            read_process: str, memory: int,
            checksum: str, storage_class: str | None, tier_policy: str | None,
            retain_years: int | None, retention_map: Path | None,
            retention_classes: tuple[str, ...], lock_mode: str | None, legal_hold: bool, dedup: bool,
            compress: str | None, prices: Path | None,
            report_path: Path | None, shard: str | None, workers: int | None,
            scheduler: str | None, slice_states: str | None, progress: bool | None,
            stats_interval: float | None, include: tuple[str, ...], exclude: tuple[str, ...],
            study_date_from: str | None, study_date_to: str | None, min_age: str | None,
            max_age: str | None,
            **transfer: Any) -> None:
    """Copy SOURCE directories to DEST: s3://bucket/prefix (AWS, Wasabi, Ceph, MinIO, any
    S3-compatible store with --endpoint-url) or a local directory (/dir or file:///dir, which
    must exist and lie outside every SOURCE).

    Exit status: 0 when every file was migrated or deliberately skipped, 1 when some still
    need migrating (see --report), 2 on an error that stopped the run.
    """
    if len(paths) < 2:
        raise click.UsageError("give at least one SOURCE and a DEST")
    if stats_interval is None:
        stats_interval = 0.0 if sys.stderr.isatty() else DEFAULT_STATS_INTERVAL
    if stats_interval > 0:
        info_to_stderr()
    cfg = MigrateConfig(
        sources=tuple(Path(p) for p in paths[:-1]),
        dest=destination(paths[-1], endpoint_url=endpoint_url, provider=provider, region=region,
                         profile=profile, addressing_style=addressing_style, sse=sse,
                         sse_kms_key_id=sse_kms_key_id, sse_c_key_file=sse_c_key_file,
                         encryption_scope=encryption_scope),
        state_dir=state_dir, dry_run=dry_run, offline=offline, preflight=True,
        bundle_size=bundle_size, large_file=large_file, pack=pack,
        transfer=transfer_config(**transfer, checksum=checksum),
        read_threads=read_threads, read_process=read_process, memory=memory,
        report_path=report_path,
        tiers=TierPolicy.parse(tier_policy, default=storage_class),
        retention=_retention(retain_years, retention_map, retention_classes, lock_mode,
                             legal_hold),
        progress=sys.stderr.isatty() if progress is None else progress, dedup=dedup,
        compress=compress or "", prices=PriceTable.load(prices) if prices else None,
        shard=Shard.parse(shard) if shard is not None else None,
        stats_interval=stats_interval, sample=parse_sample(sample) if sample else 0,
        filters=Filters.parse(include=include, exclude=exclude, study_from=study_date_from,
                              study_to=study_date_to, min_age=min_age, max_age=max_age),
    )
    for option, path in (("--report", report_path), *(("--log-file", f) for f in log_files())):
        src = path and next((s for s in cfg.sources if inside(path, s)), None)
        if src is not None:
            raise ConfigError(f"{option} {path} lies inside the source {src}, which is never "
                              "written to: give a path outside every source")
    if slice_states is not None and workers is None and scheduler is None:
        raise click.UsageError("--slice-states is for a run on workers: add --workers or "
                               "--scheduler")
    if workers is not None or scheduler is not None:
        if workers is not None and scheduler is not None:
            raise click.UsageError("--workers starts a cluster here, --scheduler uses one: "
                                   "give one or the other")
        logs = log_files()
        stats = migrate_on_dask(cfg, workers=workers, scheduler=scheduler, states=slice_states,
                                echo=lambda line: click.echo(line, err=True),
                                log_file=logs[0] if logs else None,
                                verbose=click.get_current_context().find_root().params.get(
                                    "verbose", 0))
    else:
        quiet_gc()
        stats = run_main(run_migrate(cfg))
    _print_summary(stats, dry_run=dry_run)
    sys.exit(0 if stats.not_migrated == 0 else 1)


def _retention(years: int | None, path: Path | None, classes: tuple[str, ...],
               mode: str | None, legal_hold: bool) -> Retention | None:
    """The retention asked for, its map read through once (one line for a bad row) before
    the state directory is touched."""
    if years is None and path is None and not legal_hold:
        if classes:
            raise click.UsageError("--retention-class goes with --retention-map")
        if mode is not None:  # it locked nothing, without a word
            raise click.UsageError("--lock-mode goes with --retain-years or --retention-map")
        return None
    rmap = RetentionMap(path, parse_classes(classes)) if path is not None else None
    if rmap is not None:
        rmap.check()
    return Retention(years, mode or "GOVERNANCE", legal_hold, rmap)


def _print_summary(s: Stats, *, dry_run: bool) -> None:
    mb = s.bytes_seen / 1e6
    click.echo(f"files seen: {s.files_seen:,} ({mb:,.1f} MB) in {s.seconds:,.1f} s")
    if dry_run:
        click.echo("dry run: nothing was written to the destination" if not s.estimate
                   or s.estimate["rates"] is None else "dry run: nothing of the archive was "
                   "written (only probe objects, to time uploads, deleted at once)")
        click.echo(f"plan: {s.planned_studies:,} studies, {s.planned_files:,} files, "
                   f"{s.planned_bytes / 1e6:,.1f} MB in {s.planned_objects:,} objects")
        click.echo(f"requests: {s.planned_requests + s.setup_requests:,} "
                   f"({s.planned_requests:,} for the objects, {s.setup_requests:,} for the "
                   "pre-flight and the migration's records; retries come on top)")
        for line in s.store_lines + s.estimate_lines:
            click.echo(line)
        if s.packable_objects >= 10 and 2 * s.packs <= s.packable_objects:
            click.echo(f"small studies: with --pack {HINT_SIZE >> 20}MiB, the "
                       f"{s.packable_objects:,} objects smaller than that"
                       f"{' (in the part read)' if s.estimate else ''} would be "
                       f"{s.packs:,} (far fewer requests and objects; a study that "
                       "shares an object cannot be deleted or re-tiered alone)")
    else:
        click.echo(f"migrated now: {s.files_migrated:,} files in {s.objects_uploaded:,} new "
                   f"objects ({s.bytes_uploaded / 1e6:,.1f} MB); "
                   "adopted (stored by an interrupted attempt): "
                   f"{s.objects_adopted:,}"
                   + (f" ({s.files_adopted:,} of those files)" if s.files_adopted else "")
                   + f"; already migrated: {s.already_migrated:,}")
    if s.adopted_other_policy:
        click.echo(f"WARNING: {s.adopted_other_policy:,} objects adopted from the interrupted "
                   "run keep the storage class and lock it asked for, not this run's (see "
                   "`pacsmigrate policy` for what the store may still change)")
    if s.retention_defaulted:
        click.echo(f"retention map: {s.retention_defaulted:,} study objects it does not name: "
                   "locked for --retain-years")
    if s.retention_unlocked:
        click.echo(f"WARNING: retention map: {s.retention_unlocked:,} study objects it does not "
                   "name: no lock (give --retain-years for them)")
    for line in s.cost_lines:
        click.echo(line)
    if s.duplicate_files:
        click.echo(f"deduplicated: {s.duplicate_files:,} files ({s.duplicate_bytes / 1e6:,.1f} "
                   "MB) were identical to files stored already: indexed, not stored again")
    if s.compressed_files:
        click.echo(f"compressed (zstd): {s.compressed_files:,} files, "
                   f"{s.compressed_from / 1e6:,.1f} MB stored as {s.compressed_to / 1e6:,.1f} MB")
    for name, n in sorted(s.objects_by_class.items()):
        line = f"storage class {name}: {n:,} objects, {s.bytes_by_class[name] / 1e6:,.1f} MB"
        if s.small_by_class[name]:  # below the class's minimum billable size, or overhead
            line += (f"; {s.small_by_class[name]:,} objects billed above their size: "
                     f"{s.billed_by_class[name] / 1e6:,.1f} MB billed")
        click.echo(line)
    for title, counter in (("unsorted (stored outside studies)", s.unsorted),
                           ("skipped", s.skipped), ("failed", s.failed),
                           ("filtered out (a run without the filter takes them)",
                            s.filtered)):
        for reason, n in sorted(counter.items()):
            click.echo(f"{title}: {n:,} {reason}")
    if s.repaired_files or s.damaged_objects or s.damaged_source_gone:
        click.echo(f"repair: {s.repaired_files:,} files a verify found damaged were taken to "
                   f"be stored again (counted above); {len(s.damaged_objects):,} damaged "
                   "objects are no longer indexed (delete them from the store once their "
                   "locks allow): " + ", ".join(s.damaged_objects[:5])
                   + (" ..." if len(s.damaged_objects) > 5 else ""))
    if s.damaged_source_gone:
        click.echo(f"WARNING: {s.damaged_source_gone:,} files a verify found damaged have no "
                   "source any more: their damaged copy stays indexed (see verify)")
    if s.reread_changed:
        click.echo(f"re-read because the source changed: {s.reread_changed:,} files "
                   f"({s.reread_bytes / 1e6:,.1f} MB)")
    if s.retries:
        causes = ", ".join(f"{n:,} {c}" for c, n in s.retries.most_common())
        click.echo(f"store faults survived (retried): {sum(s.retries.values()):,} ({causes})")
    if s.throttle_slowdowns:
        click.echo(f"throttled by the store: slowed down {s.throttle_slowdowns:,} times "
                   f"(concurrency went as low as {s.lowest_concurrency})")
    if s.uploads_resumed:
        click.echo(f"unfinished uploads resumed from an interrupted run: {s.uploads_resumed:,} "
                   f"({s.parts_reused:,} of their parts kept, not sent again)")
    if s.uploads_restarted:
        click.echo(f"unfinished uploads over 12 h old sent anew: {s.uploads_restarted:,} "
                   "(a cleanup may abort them; their parts were not kept)")
    if s.dry_run_mismatch:
        click.echo(f"WARNING: {s.dry_run_mismatch:,} files hold other bytes than at the dry run "
                   "although size and mtime are unchanged (stored as they are now)")
    if dry_run and s.estimate and s.not_migrated == 0:
        state = "OK: the whole tree estimated above from a sample"
    elif dry_run and s.planned_files and s.not_migrated == 0:
        state = f"OK: a real run would store {s.planned_files:,} files (as planned above)"
    else:
        state = "OK: nothing left to migrate" if s.not_migrated == 0 else (
            f"NOT DONE: {s.not_migrated:,} files still to migrate; re-run the same command")
    click.echo(state)
