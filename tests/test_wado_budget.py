"""The bytes all DICOMweb answers hold share one budget: answers reading ahead must never end
up waiting on each other for it (a deadlock the fourth bug hunt found with 3-4 clients)."""

from __future__ import annotations

import asyncio

import blake3
import pytest

from pacsmigrate.backends.memory import MemoryBackend
from pacsmigrate.dicomweb import wado
from pacsmigrate.dicomweb.catalog import Instance

KiB = 1024


def _instances(backend: MemoryBackend, study: int, sizes: list[int]) -> list[Instance]:
    """One instance an object, so that each is a run of its own."""
    out = []
    for i, size in enumerate(sizes):
        key = f"s{study}/{i:03d}.tar"
        data = bytes([study, i % 256]) * (size // 2)
        backend.objects[key], backend.metadata[key] = data, {}
        out.append(Instance(f"1.{study}", "1.1", f"1.{study}.{i}", "CT", "20200101", "",
                            key, 0, len(data), blake3.blake3(data).hexdigest(), len(data), ""))
    return out


async def _read_all(backend: MemoryBackend, budget: wado.Budget, found: list[Instance]
                    ) -> int:
    got = 0
    parts = wado.instances(backend, budget, found)
    try:
        async for _, chunks in parts:
            async for chunk in chunks:
                got += len(chunk)
                await asyncio.sleep(0)  # a client taking its time: the others go on
    finally:
        await parts.aclose()
    return got


@pytest.mark.parametrize("clients, budget_k, sizes_k", [
    (2, 128, [16, 64, 64, 64]), (3, 192, [16, 64, 64, 64]), (4, 320, [8, 64, 16, 64, 64]),
    (8, 320, [64, 16, 64, 32])])
def test_answers_reading_ahead_never_wait_on_each_other(clients: int, budget_k: int,
                                                        sizes_k: list[int]) -> None:
    """Each answer would hold up to AHEAD runs; the budget holds fewer than all of theirs.
    Before, an answer that gave back a small run waited for a larger one while holding its
    read-ahead: with two or more, all of them stopped for good (three of these four did).
    Now an answer waits only while it holds nothing."""
    backend = MemoryBackend()
    budget = wado.Budget(budget_k * KiB)
    studies = [_instances(backend, s, [k * KiB for k in sizes_k] * 4) for s in range(clients)]

    async def main() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(
            *(_read_all(backend, budget, found) for found in studies)), timeout=20)

    got = asyncio.run(main())
    assert got == [sum(i.size for i in found) for found in studies]
    assert budget.free == budget.total  # all of it given back


def test_a_reader_that_stops_gives_back_what_its_answer_held() -> None:
    """A client gone mid-answer: the answer is closed and its read-ahead given back."""
    backend = MemoryBackend()
    budget = wado.Budget(4 * 64 * KiB)
    found = _instances(backend, 0, [64 * KiB] * 8)

    async def main() -> None:
        parts = wado.instances(backend, budget, found)
        _, chunks = await anext(parts)
        async for _ in chunks:
            break
        assert budget.free < budget.total
        await parts.aclose()

    asyncio.run(main())
    assert budget.free == budget.total
