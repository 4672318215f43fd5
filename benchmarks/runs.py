"""Running tools on a tree: a fresh bucket and state per run, verification, repeats, retries."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from measure import Timed, disturbed, log_tail, run_timed, warm
from store import Store
from tools import BIN, PREFIX, Variant
from trees import Tree


@dataclass
class Ctx:
    """What every section needs: the store, the workdir and the run's policies."""

    store: Store
    work: Path
    repeats: int
    idle_wait: float
    max_others: float
    retries: int
    tuned: bool
    peers: tuple[str, ...]
    quick: bool
    timeout: float
    warm: bool = True  # read the tree before each timed run (measure.warm)


@dataclass
class Run:
    variant: Variant
    repeat: int
    position: int
    bucket: str
    state: Path
    timed: Timed
    listing: dict[str, int]
    report: dict[str, Any] | None
    note: str
    spread: float | None = None  # pacsmigrate: objects holding each study's files, mean

    @property
    def objects(self) -> int:
        return len(self.listing)

    @property
    def tars(self) -> int:
        return sum(1 for key in self.listing if key.endswith(".tar"))


@dataclass
class Outcome:
    """All kept runs of one variant (and the discarded, disturbed ones)."""

    variant: Variant
    runs: list[Run] = field(default_factory=list)
    discarded: list[Run] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(r.timed.wall for r in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(r.timed.cpu for r in self.runs)

    @property
    def peak_rss_mib(self) -> str:
        values = [r.timed.peak_rss_mib for r in self.runs if r.timed.peak_rss_mib]
        return f"{max(values):,.0f}" if values else "n/a"

    @property
    def fastest(self) -> float:
        return min(r.timed.wall for r in self.runs)

    def median_of(self, attr: str) -> float | None:
        values = [getattr(r.timed, attr) for r in self.runs]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None


def fail(message: str, log: Path | None = None) -> None:
    tail = log_tail(log) if log else ""
    raise SystemExit(f"bench: FAILED: {message}"
                     + (f"\n--- last lines of {log} ---\n{tail}" if tail else ""))


def pm_status(state: Path, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([str(BIN / "pacsmigrate"), "status", "--state", str(state), "--json"],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        fail(f"pacsmigrate status exited {proc.returncode}: {proc.stderr.strip()}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def pm_spread(state: Path, env: dict[str, str]) -> float | None:
    """How many objects hold each study's files, on average over the studies (from the
    index; 1.00 = every study in one object, whether or not it shares it with others)."""
    proc = subprocess.run([str(BIN / "pacsmigrate"), "index", "export", "--state", str(state),
                           "--format", "jsonl"], env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        fail(f"pacsmigrate index export exited {proc.returncode}: {proc.stderr.strip()}")
    keys: dict[str, set[str]] = {}
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        if row["study_uid"]:
            keys.setdefault(row["study_uid"], set()).add(row["key"])
    return sum(map(len, keys.values())) / len(keys) if keys else None


def pm_verify(state: Path, env: dict[str, str], log: Path) -> None:
    """Read every stored member back and compare its blake3 with the index (`verify --deep`,
    after the timed run): fail the bench unless the store holds the bytes pacsmigrate says."""
    out = log.with_name(f"{log.stem}-verify.log")
    proc = subprocess.run([str(BIN / "pacsmigrate"), "verify", "--state", str(state), "--deep",
                           "--no-progress"], env=env, capture_output=True, text=True, check=False)
    out.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        fail(f"pacsmigrate verify --deep exited {proc.returncode}: what the store holds is not "
             "what the index says", out)


def verify(variant: Variant, tree: Tree, src: Path, listing: dict[str, int], state: Path,
           env: dict[str, str], log: Path, *, dry_run: bool) -> str:
    """Fail the bench unless the run stored exactly what it should (pacsmigrate: its status,
    and its stored bytes read back); return a short note."""
    if variant.tool == "pacsmigrate" and dry_run:
        if listing:
            fail(f"a dry run stored {len(listing)} objects", log)
        return "dry run: nothing stored"
    if variant.tool == "pacsmigrate":
        doc = pm_status(state, env)
        if doc["files_migrated"] != tree.files or doc["files_pending"] or doc["uploads_in_doubt"]:
            fail(f"pacsmigrate migrated {doc['files_migrated']} of {tree.files} files "
                 f"(pending {doc['files_pending']}, in doubt {doc['uploads_in_doubt']})", log)
        if doc["files_with_problems"]:
            fail(f"pacsmigrate reports {doc['files_with_problems']} files with problems", log)
        # The status is the check; the bucket only has to hold something. Sizes and
        # extensions are left to the pipeline (a rewrite may compress or rename bundles).
        if not listing:
            fail("pacsmigrate reports success but the bucket is empty", log)
        pm_verify(state, env, log)
        tars = sum(1 for key in listing if key.endswith(".tar"))
        return (f"{tars:,} bundles" if tars else f"{len(listing):,} objects, none .tar"
                ) + ", verify --deep passed"
    if variant.tool == "ceiling":
        want = {f"{PREFIX}/{src.name}": src.stat().st_size}
        if listing != want:
            fail(f"expected one object {want}, the bucket holds {len(listing)} objects", log)
        return "1 object"
    want_keys = {f"{PREFIX}/{rel}" for rel in tree.rel_paths()}
    got = set(listing)
    if got != want_keys:
        missing, extra = want_keys - got, got - want_keys
        fail(f"{variant.name} stored {len(got)} objects, expected {len(want_keys)} "
             f"({len(missing)} missing, e.g. {sorted(missing)[:3]}; {len(extra)} unexpected, "
             f"e.g. {sorted(extra)[:3]})", log)
    if sum(listing.values()) != tree.bytes:
        fail(f"{variant.name} stored {sum(listing.values())} bytes, the tree has {tree.bytes}",
             log)
    return "1 object per file"


def run_one(ctx: Ctx, variant: Variant, tree: Tree, *, section: str, repeat: int = 1,
            position: int = 1, attempt: int = 1, src: Path | None = None, report: bool = False,
            keep_state: bool = False, keep_bucket: bool = False, dry_run: bool = False,
            idle_wait: float | None = None, prefix: Sequence[str] = ()) -> Run:
    """One timed run into a fresh bucket (and a fresh --state), verified, bucket dropped
    (unless keep_bucket: then the caller drops it, see run_again)."""
    src = src or tree.root
    label = f"{section}-r{repeat}-{variant.slug}" + (f"-a{attempt}" if attempt > 1 else "")
    bucket = ctx.store.fresh_bucket(f"b-{label}")
    state = ctx.work / "state" / label
    shutil.rmtree(state, ignore_errors=True)
    report_path = ctx.work / "reports" / f"{label}.json" if report else None
    if report_path:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.unlink(missing_ok=True)
    argv = [*prefix, *variant.argv(src=src, endpoint=ctx.store.endpoint, bucket=bucket,
                                   state=state, report=report_path)]
    env = variant.env(ctx.store.env, endpoint=ctx.store.endpoint, work=ctx.work)
    log = ctx.work / "logs" / f"{label}.log"
    if ctx.warm:
        warm(src)
    t = run_timed(argv, env=env, log=log, own_pids=ctx.store.own_pids(),
                  idle_wait=ctx.idle_wait if idle_wait is None else idle_wait,
                  timeout=ctx.timeout)
    if t.code != 0:
        fail(f"{variant.name} exited with status {t.code}: {' '.join(argv)}", log)
    listing = ctx.store.listing(bucket)
    note = verify(variant, tree, src, listing, state, env, log, dry_run=dry_run)
    doc = None
    if report_path and report_path.exists():
        doc = json.loads(report_path.read_text())
    spread = pm_spread(state, env) if variant.tool == "pacsmigrate" and not dry_run else None
    run = Run(variant=variant, repeat=repeat, position=position, bucket=bucket, state=state,
              timed=t, listing=listing, report=doc, note=note, spread=spread)
    if not keep_bucket:
        ctx.store.drop(bucket)
    if not keep_state:
        shutil.rmtree(state, ignore_errors=True)
    print(f"  {section} r{repeat} #{position} {variant.name:<38} {t.wall:8.2f} s  "
          f"{tree.files / t.wall:8.1f} files/s  {tree.bytes / 1e6 / t.wall:7.1f} MB/s  "
          f"CPU {t.cpu:6.1f} s  RSS {t.peak_rss_mib or 0:6.0f} MiB"
          + (f"  server {t.own_cpu:5.1f} s" if t.own_cpu is not None else "")
          + (f"  others {t.other_cpu:5.1f} s" if t.other_cpu is not None else "")
          + f"  [{note}]" + ("" if t.started_idle else "  (machine busy at start)"), flush=True)
    return run


def run_matrix(ctx: Ctx, variants: list[Variant], tree: Tree, *, section: str,
               srcs: dict[str, Path] | None = None) -> list[Outcome]:
    """Every variant `ctx.repeats` times, order reversed on every other repeat.

    A run during which the rest of the machine used more than ctx.max_others CPUs is
    discarded and run again (up to ctx.retries times; the last attempt counts).
    """
    outcomes = {v.name: Outcome(v) for v in variants}
    for repeat in range(1, ctx.repeats + 1):
        order = variants if repeat % 2 == 1 else list(reversed(variants))
        for position, variant in enumerate(order, 1):
            for attempt in range(1, ctx.retries + 2):
                run = run_one(ctx, variant, tree, section=section, repeat=repeat,
                              position=position, attempt=attempt,
                              src=(srcs or {}).get(variant.name))
                if not disturbed(run.timed, ctx.max_others) or attempt > ctx.retries:
                    break
                print(f"    others used {run.timed.other_cpu:.1f} CPU-s in "
                      f"{run.timed.wall:.1f} s: discarded, running it again", flush=True)
                outcomes[variant.name].discarded.append(run)
            outcomes[variant.name].runs.append(run)
    return list(outcomes.values())


def order_lines(outcomes: list[Outcome]) -> list[str]:
    repeats = max(r.repeat for o in outcomes for r in o.runs)
    lines = []
    for rep in range(1, repeats + 1):
        runs = sorted((r for o in outcomes for r in o.runs if r.repeat == rep),
                      key=lambda r: r.position)
        lines.append(f"- repeat {rep}: " + " → ".join(r.variant.name for r in runs))
    return lines


def disturbance_note(outcomes: list[Outcome], ctx: Ctx) -> str:
    runs = [r for o in outcomes for r in o.runs]
    busy = [r for r in runs if not r.timed.started_idle]
    kept = [r for r in runs if disturbed(r.timed, ctx.max_others)]
    dropped = [r for o in outcomes for r in o.discarded]
    if ctx.idle_wait > 0:
        text = (f"Before each timed run the bench waited (up to {ctx.idle_wait:.0f} s) for a "
                "1-s window with < 0.25 CPUs busy machine-wide; "
                + (f"{len(busy)} of {len(runs)} runs started without one." if busy
                   else "every run got one."))
    else:
        text = "The bench did not wait for an idle machine (--idle-wait 0)."
    limit = f"the rest of the machine averaged more than {ctx.max_others} CPUs"
    if ctx.retries:
        text += (f" Runs during which {limit} were discarded and run again (up to "
                 f"{ctx.retries} times): " + ("; ".join(
                     f"{r.variant.name} r{r.repeat}: {r.timed.wall:.2f} s with "
                     f"{r.timed.other_cpu or 0:.1f} CPU-s of others" for r in dropped) or "none")
                 + ".")
    if kept:
        text += (f" Disturbed ({limit}), kept: " + ", ".join(
            f"{r.variant.name} r{r.repeat} ({r.timed.other_cpu or 0:.1f} CPU-s of others)"
            for r in kept) + ".")
    return text


def run_again(ctx: Ctx, first: Run, tree: Tree, *, section: str) -> Run:
    """The same pacsmigrate command once more, on the state and bucket `first` kept (run_one
    with keep_state and keep_bucket): what re-running a complete migration costs (every file
    found unchanged in the index). It must store nothing and leave the bucket as it was; the
    bucket is dropped after it."""
    variant = first.variant
    report_path = ctx.work / "reports" / f"{section}-again.json"
    report_path.unlink(missing_ok=True)
    argv = variant.argv(src=tree.root, endpoint=ctx.store.endpoint, bucket=first.bucket,
                        state=first.state, report=report_path)
    env = variant.env(ctx.store.env, endpoint=ctx.store.endpoint, work=ctx.work)
    log = ctx.work / "logs" / f"{section}-again.log"
    if ctx.warm:
        warm(tree.root)
    try:
        t = run_timed(argv, env=env, log=log, own_pids=ctx.store.own_pids(),
                      idle_wait=ctx.idle_wait, timeout=ctx.timeout)
        if t.code != 0:
            fail(f"{variant.name} (again) exited with status {t.code}: {' '.join(argv)}", log)
        listing = ctx.store.listing(first.bucket)
        doc = json.loads(report_path.read_text()) if report_path.exists() else {}
        done = doc.get("run") or {}
        if listing != first.listing or done.get("files_migrated") != 0 \
                or done.get("already_migrated") != tree.files:
            fail(f"{variant.name} (again) was to find all {tree.files:,} files migrated and "
                 f"store nothing: it migrated {done.get('files_migrated')}, found "
                 f"{done.get('already_migrated')} migrated; the bucket holds "
                 f"{len(listing):,} objects against {len(first.listing):,}", log)
    finally:
        ctx.store.drop(first.bucket)
    print(f"  {section} again {variant.name:<38} {t.wall:8.2f} s  "
          f"{tree.files / t.wall:8.1f} files/s  CPU {t.cpu:6.1f} s  [nothing stored, "
          f"{tree.files:,} found migrated]", flush=True)
    return Run(variant=variant, repeat=first.repeat, position=first.position,
               bucket=first.bucket, state=first.state, timed=t, listing=listing,
               report=doc, note="nothing stored")
