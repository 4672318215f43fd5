"""The state's cost alone: commit N files in packs, then end the run as `migrate` does.

    python benchmarks/commitbench.py 5000000 /tmp/state random      # or sequential

Packs of 2,800 files (as `--pack 8MiB` makes of 1.2 KiB files), one commit each, rows as
the bench's tiny tree has them (paths in walk order, studies of 14); SOP UIDs numbered in
order per series (`sequential`) or random 2.25 ones (`random`). Prints the CPU and wall
time of every million commits, then of the end (the compaction, and what is left of the
SOP log merged). Run it with PYTHONPATH at another checkout to compare versions.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.records import DICOM, Described, Entry, StoredObject

PACK = 2800


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", type=int)
    ap.add_argument("state", type=Path, help="made afresh, removed at the end")
    ap.add_argument("uids", choices=("sequential", "random"))
    args = ap.parse_args()
    shutil.rmtree(args.state, ignore_errors=True)
    cp = Checkpoint(args.state)
    rnd = random.Random(1)
    started, cpu0 = time.time(), time.process_time()
    mark = (started, cpu0)
    i = n = 0
    while i < args.files:
        entries = []
        for j in range(i, min(i + PACK, args.files)):
            study = f"1.2.826.0.1.3680043.8.498.{j // 14}"
            sop = (f"2.25.{rnd.getrandbits(122)}" if args.uids == "random"
                   else f"{study}.1.{j % 14}")
            about = Described(f"{j // 14:032x}", DICOM, "", study, study + ".1", sop, "CT",
                              "20240101", "1.2.840.10008.1.2.1")
            entries.append(Entry(b"/tree/%04d/%07d.dcm" % (j // 10000, j), 512 * (j - i + 1),
                                 1208, f"{rnd.getrandbits(256):064x}", 1208, 1, about))
        cp.commit_objects([StoredObject(f"p/{n}.tar", "tar", entries[0].about.group, f"b{n}",
                                        PACK * 2048, "e", "", tuple(entries))])
        n += 1
        i += len(entries)
        if i % 1_000_000 < PACK:
            now = (time.time(), time.process_time())
            print(f"  {i:>11,} rows: the last ~1M {now[0] - mark[0]:.1f} s, "
                  f"{now[1] - mark[1]:.1f} CPU-s", flush=True)
            mark = now
    commit = (time.time() - started, time.process_time() - cpu0)
    end0 = (time.time(), time.process_time())
    cp.compact()
    if hasattr(cp, "merge_sop_log"):  # (versions before the SOP log have none)
        cp.merge_sop_log()
    end = (time.time() - end0[0], time.process_time() - end0[1])
    size = sum(f.stat().st_size for f in args.state.rglob("*") if f.is_file())
    print(f"{args.uids} {args.files:,}: commits {commit[0]:.1f} s, {commit[1]:.1f} CPU-s "
          f"({commit[1] / args.files * 1e6:.1f} us a row); end of run {end[0]:.1f} s, "
          f"{end[1]:.1f} CPU-s; sop rows {cp.counts()['sop']:,}; state {size / 1e6:.0f} MB",
          flush=True)
    cp.close()
    shutil.rmtree(args.state, ignore_errors=True)


if __name__ == "__main__":
    main()
