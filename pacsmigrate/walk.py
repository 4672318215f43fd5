"""Walk source trees in a fixed order, listing many directories ahead on slow storage."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from .records import FileEntry
from .scan import scan


async def _count(roots: Sequence[bytes]) -> int:
    n = 0
    async for batch in scan(roots):
        n += sum(isinstance(e, FileEntry) for e in batch)
    return n


def count_files(roots: Sequence[bytes]) -> int:
    """Regular files under roots, as the migration's walk sees them (for the walk bench)."""
    return asyncio.run(_count([os.fsencode(os.path.abspath(r)) for r in roots]))


def main(argv: Sequence[str]) -> int:
    print(count_files([os.fsencode(a) for a in argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
