"""The JSON report an auditor can read: totals, and every file not migrated with why; the
history of runs and of verifications it carries."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import socket
from pathlib import Path
from typing import IO, Any

from . import __version__, rows
from .checkpoint import Checkpoint
from .config import MigrateConfig
from .errors import PacsMigrateError
from .records import now_iso
from .stats import Stats


def _stream(out: IO[str], name: str, items: Any) -> int:
    """Write `"name": [ ... ]` one item per line; the list is never built in memory."""
    out.write(f',\n"{name}": [')
    n = 0
    for item in items:
        out.write(("\n" if n == 0 else ",\n") + json.dumps(item, ensure_ascii=True))
        n += 1
    out.write("\n]")
    return n


def write_report(path: Path, cp: Checkpoint, stats: Stats, cfg: MigrateConfig) -> None:
    """Totals of this run and of the state, then three lists over the whole state.

    not_migrated: files still to do (exit status 1); skipped: deliberate skips (symlinks,
    devices, vanished files); unsorted: files stored, but outside any study, with reason.
    """
    tmp = path.with_name(path.name + ".tmp")
    files, nbytes = cp.deduplicated()
    with open(tmp, "w", encoding="ascii") as out:
        head = {"tool": "pacsmigrate", "format": "pacsmigrate.report/1",
                "version": __version__, "host": socket.gethostname(), "written": now_iso(),
                "destination": str(cfg.dest), "sources": [str(s) for s in cfg.sources],
                "dry_run": cfg.dry_run, "run": stats.as_dict(),
                "state": {**cp.counts(), "deduplicated_files": files,
                          "deduplicated_bytes": nbytes},
                # every run on this state, this one last: resumes add up, nothing is lost
                "runs": cp.runs(),
                # every verify of it, with its findings by kind (verify writes no LMDB)
                "verifications": verifications(cp.state_dir)}
        out.write(json.dumps(head, ensure_ascii=True, indent=1)[:-2])
        pending = ({"source_path": v["source_path"], "source_path_b64": v["source_path_b64"],
                    "reason": "pending", "detail": "read, not yet stored"}
                   for _, v in cp.iter_db("spill"))
        problems = list_problems(cp, final=False)
        _stream(out, "not_migrated", _chain(problems, pending))
        _stream(out, "skipped", list_problems(cp, final=True))
        _stream(out, "unsorted", ({"source_path": r["source_path"],
                                   "source_path_b64": r["source_path_b64"],
                                   "reason": r["reason"], "key": r["key"]}
                                  for _, r in cp.iter_db("index", keep=rows.unsorted)))
        # Two paths, one SOPInstanceUID, other bytes: both kept (a re-sent or edited image).
        _stream(out, "same_sop_other_bytes", (v for _, v in cp.iter_db("conflicts")))
        out.write("\n}\n")
    os.replace(tmp, path)


def list_problems(cp: Checkpoint, *, final: bool) -> Any:
    return (v for _, v in cp.iter_db("problems") if v["final"] == final)


def _chain(*its: Any) -> Any:
    for it in its:
        yield from it


def outcome_of(stop: BaseException) -> str:
    """How a run that raised ended, in the words of its record."""
    if isinstance(stop, (KeyboardInterrupt, asyncio.CancelledError)):
        return "interrupted"
    if isinstance(stop, PacsMigrateError):
        return f"stopped: {stop}"
    return f"stopped: {type(stop).__name__}"


def run_record(cfg: MigrateConfig, s: Stats, *, started: str, outcome: str) -> dict[str, Any]:
    """One run for the state's history (and every later report): who ran what, where, when."""
    return {"version": __version__, "host": socket.gethostname(), "user": _user(),
            "pid": os.getpid(), "started": started, "ended": now_iso(),
            "destination": str(cfg.dest), "sources": [os.path.abspath(p) for p in cfg.sources],
            "shard": str(cfg.shard) if cfg.shard else None, "dry_run": cfg.dry_run,
            "policy": cfg.asked(),
            "outcome": outcome, "files_seen": s.files_seen,
            "files_migrated": s.files_migrated, "bytes_uploaded": s.bytes_uploaded,
            "already_migrated": s.already_migrated, "not_migrated": s.not_migrated,
            "seconds": s.seconds}


VERIFY_HISTORY = "verify-history.jsonl"  # in the state directory, one line per verify
VERIFY_KEPT = 10_000


def verify_record(dest: str, options: dict[str, Any], *, started: str, outcome: str,
                  totals: dict[str, Any] | None, damaged: int) -> dict[str, Any]:
    """One verify for the history: who checked what, when, and what was found (counts and
    kinds of findings; never a path: the findings name paths, the history does not)."""
    return {"version": __version__, "host": socket.gethostname(), "user": _user(),
            "pid": os.getpid(), "started": started, "ended": now_iso(), "destination": dest,
            "options": options, "outcome": outcome, "totals": totals,
            "damaged_files": damaged}


def record_verify(state_dir: Path, record: dict[str, Any]) -> None:
    """Append one verify to the state's history (a file: verify opens the state read-only,
    beside a running migrate)."""
    path = state_dir / VERIFY_HISTORY
    with open(path, "a+b") as out:
        out.seek(0, os.SEEK_END)
        torn = False
        if out.tell():  # a line a crash cut short must not swallow this one
            out.seek(-1, os.SEEK_END)
            torn = out.read(1) != b"\n"
        out.write((b"\n" if torn else b"")
                  + json.dumps(record, ensure_ascii=True).encode() + b"\n")
        out.flush()
        os.fsync(out.fileno())


def verifications(state_dir: Path) -> list[dict[str, Any]]:
    """Every verify recorded in the state, oldest first (a torn last line is left out)."""
    try:
        with open(state_dir / VERIFY_HISTORY, encoding="ascii") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines[-VERIFY_KEPT:]:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash
    return out


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid without a passwd entry
        return str(os.getuid())
