"""--profile: one extra pacsmigrate run under py-spy, summarised as its top functions."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from runs import Ctx, run_one
from tools import BIN, PM_DEFAULTS
from trees import Tree

_LINE = re.compile(r":\d+\)$")


def _frames(stack: str) -> list[str]:
    # Raw lines are `process N:"cmd";frame;frame... COUNT`; a frame is `func (file.py:line)`.
    parts = stack.split(";")
    if parts and parts[0].startswith("process "):
        parts = parts[1:]
    return [_LINE.sub(")", p) for p in parts]


def summarise(raw: Path, top: int = 15) -> tuple[list[str], int]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), _frames(stack)
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return ["(no samples)"], 0
    out = [(f"# {total:,} samples; own = the function itself was running, with = it was on the "
           "stack"), "", "# top functions by own samples"]
    out += [f"{100 * n / total:5.1f} %  {f}" for f, n in own.most_common(top)]
    out += ["", "# pacsmigrate's functions by samples with them on the stack"]
    mine = [(f, n) for f, n in inclusive.most_common() if "pacsmigrate/" in f]
    out += [f"{100 * n / total:5.1f} %  {f}" for f, n in mine[:top]]
    return out, total


def profile(ctx: Ctx, tree: Tree) -> tuple[list[str], str]:
    """(summary lines, the top own-time function) of one pacsmigrate run with defaults."""
    raw = ctx.work / "profile" / f"py-spy-{tree.name}.txt"
    raw.parent.mkdir(parents=True, exist_ok=True)
    run = run_one(ctx, PM_DEFAULTS, tree, section="profile", idle_wait=0, prefix=(
        str(BIN / "py-spy"), "record", "--rate", "100", "--subprocesses", "--nonblocking",
        "--format", "raw", "--output", str(raw), "--"))
    lines, _total = summarise(raw)
    # The first "NN.N %  function (file)" line is the top function by own samples.
    top = next((m for ln in lines if (m := re.match(r"\s*([\d.]+) %\s+(.+)$", ln))), None)
    head = [(f"One extra `pacsmigrate migrate` with defaults on **{tree.name}** under "
            "`py-spy record --rate 100 --subprocesses --nonblocking --format raw` (active "
            f"threads only, idle ones are not sampled; wall {run.timed.wall:.1f} s under "
            "py-spy):"), "", "```", *lines, "```"]
    return head, (f"py-spy on {tree.name}: top own time {top.group(2)} ({top.group(1)} %)"
                  if top else "")
