"""`status`: what is done and what remains in a state directory, in words or as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..checkpoint import Checkpoint
from ..lmdbfile import lock_held
from ..report import verifications
from ..tables import KILLED, RUNNING
from .common import handle_errors, state_option


@click.command()
@state_option()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def status(state_dir: Path, as_json: bool) -> None:
    """What is done and what remains in a state directory."""
    cp = Checkpoint(state_dir, readonly=True)
    try:
        counts = cp.counts()
        pending = counts["spill"]
        config = cp.get_meta("config") or {}
        workers = cp.get_meta("workers")  # a run on Dask: its slices merged at its end
        open_problems = cp.open_problems()
        dedup = cp.deduplicated()
        runs = cp.runs()
        unmerged = cp.sop_log_rows()
        if runs and runs[-1].get("outcome") == RUNNING and not lock_held(state_dir):
            runs[-1] = {**runs[-1], "outcome": KILLED}  # as the next run will record it
    finally:
        cp.close()
    checks = verifications(state_dir)
    last = runs[-1] if runs else {}
    doc = {"destination": config.get("dest") or (workers or {}).get("dest"),
           "sources": config.get("sources") or last.get("sources"),
           "on_workers": workers is not None,
           "rebuilt_from_store": bool(config.get("rebuilt_from_store")),
           "files_migrated": counts["index"], "objects": counts["objects"],
           "files_pending": pending, "uploads_in_doubt": counts["intents"],
           "files_with_problems": open_problems,
           "files_deduplicated": dedup[0], "bytes_deduplicated": dedup[1],
           "same_sop_other_bytes": counts["conflicts"], "sop_rows_unmerged": unmerged,
           "files_skipped": counts["problems"] - open_problems,
           "runs": len(runs), "last_run": runs[-1] if runs else None,
           # the last run that stored (a dry run's walk says nothing of what is stored)
           "last_migration": next((r for r in reversed(runs) if not r.get("dry_run")), None),
           "verifications": len(checks), "last_verify": checks[-1] if checks else None,
           "replica_of": config.get("replica_of"), "replicated": config.get("replicated"),
           "replica_complete": config.get("replica_complete")}
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    for line in describe(doc):
        click.echo(line)


def last_run_unfinished(last: dict[str, Any]) -> bool:
    """Whether the last migration (not a dry run) stopped before its walk was sure to end:
    the state then knows only of the files it saw."""
    return not last.get("dry_run") and last.get("outcome") != "completed"


def _left(d: dict[str, Any]) -> str:
    """What is left to migrate, as far as the state can tell: the files its runs' walks saw
    and did not store; all of them only once a migrate's walk went to its end."""
    todo = d["files_pending"] + d["files_with_problems"]
    counted = (f"{todo:,} files ({d['files_pending']:,} read but not yet stored, "
               f"{d['files_with_problems']:,} that failed; the report says why)")
    last = d.get("last_migration")
    if last is None and d.get("rebuilt_from_store"):
        return ("not known: this index was rebuilt from the store (`index rebuild`), which "
                "knows what is stored, not what the sources hold; a migrate with it says")
    if last is None:
        return ("not known yet: no migrate has run (a dry run stores nothing and its plan "
                "is in `pacsmigrate plan`)")
    if last_run_unfinished(last):
        why = ("a run is under way" if last.get("outcome") == RUNNING
               else "the last migrate stopped before its end; re-run migrate")
        if todo:
            return f"at least {counted}: its walk may not have seen every file; {why}"
        return f"not known yet (its walk may not have seen every file): {why}"
    return f"{counted}; re-run migrate" if todo else "none"


def describe(d: dict[str, Any]) -> list[str]:
    """The state in sentences an operator reads at a glance."""
    last = d["last_run"]
    out = [f"destination: {d['destination']}",
           "sources: " + ", ".join(d["sources"] or [])]
    source = ""  # a replica's runs and what is left to migrate are its source migration's
    if d.get("replica_of"):
        source = " (of the source migration)"
        done = d.get("replica_complete")
        out.append(f"a replica of {d['replica_of']}: that migration's state as of "
                   f"{d.get('replicated') or '?'}; " + (
                       f"every object copied here, finished {done}" if done else
                       "the copy did NOT finish (stopped, or under way): objects may be "
                       "missing from this store; re-run `pacsmigrate replicate`"))
    out.append(f"migrated{source}: {d['files_migrated']:,} files in {d['objects']:,} objects")
    if d.get("on_workers") and last and last_run_unfinished(last):
        out.append("  a run on Dask workers merges what its slices stored into this state at "
                   "its end: until then (or if it stopped) that is only in the slices' states "
                   "(STATE/slices, or the store); re-run migrate with --workers to finish")
    if d["files_deduplicated"]:
        out.append(f"  of which {d['files_deduplicated']:,} files "
                   f"({d['bytes_deduplicated'] / 1e6:,.1f} MB) are copies of others, stored once")
    if d["same_sop_other_bytes"]:
        out.append(f"  {d['same_sop_other_bytes']:,} files share a SOPInstanceUID with a file "
                   "of other bytes (both kept; listed in the report)")
    if d["sop_rows_unmerged"]:
        out.append(f"  {d['sop_rows_unmerged']:,} rows of the SOPInstanceUID index wait to be "
                   "merged (a run stopped before its end, or one is running): `get --sop` "
                   "scans them; files among them that share a SOPInstanceUID with a file of "
                   "other bytes are counted when the next migrate merges them")
    out.append(f"still to migrate{source}: " + _left(d))
    if d["files_skipped"]:
        out.append(f"skipped on purpose: {d['files_skipped']:,} (links, devices, vanished "
                   "files; listed in the report)")
    if d["uploads_in_doubt"]:
        out.append(f"uploads in doubt: {d['uploads_in_doubt']:,} (a run stopped while they "
                   "were in flight; the next migrate checks the store: adopts those that "
                   "arrived, sends the others again)")
    if last:
        ended = (f"running now (pid {last.get('pid', '?')})" if last.get("outcome") == RUNNING
                 else f"ended {last.get('ended') or 'at an unknown time'}")
        out.append(f"runs{source}: {d['runs']:,}; the last {last.get('outcome', '?')}, started "
                   f"{last.get('started', '?')} on {last.get('host', '?')} as "
                   f"{last.get('user', '?')}, {ended}")
    check = d.get("last_verify")
    if check:
        opts = check.get("options") or {}
        how = " ".join(f"--{k}" for k in ("deep", "source") if opts.get(k)) or "objects only"
        out.append(f"verified: {d['verifications']:,} times; the last ({how}) "
                   f"{check.get('outcome', '?')}, ended {check.get('ended', '?')}")
    else:
        out.append("verified: never (pacsmigrate verify --deep --source checks every byte)")
    return out
