"""The Decoder's tile queue (serving/decoder.py PriorityGate): waiting tiles enter highest priority first."""

from __future__ import annotations

import asyncio

from tessera.serving.decoder import PriorityGate


def test_waiters_enter_highest_priority_first_and_in_arrival_order_within_one():
    async def main() -> list[str]:
        gate = PriorityGate()
        order: list[str] = []
        await gate.acquire(0)  # a tile is being decoded

        async def tile(name: str, priority: int) -> None:
            async with gate.hold(priority):
                order.append(name)

        tasks = []
        for name, priority in (("batch1", -1), ("batch2", -1), ("inter1", 0), ("inter2", 0), ("urgent", 5)):
            tasks.append(asyncio.create_task(tile(name, priority)))
            await asyncio.sleep(0)  # each is waiting before the next arrives
        assert gate.waiting == 5
        gate.release()
        await asyncio.gather(*tasks)
        assert gate.waiting == 0
        return order

    assert asyncio.run(main()) == ["urgent", "inter1", "inter2", "batch1", "batch2"]


def test_a_cancelled_waiter_never_holds_the_gate():
    async def main() -> list[str]:
        gate = PriorityGate()
        order: list[str] = []
        await gate.acquire(0)

        async def tile(name: str, priority: int) -> None:
            async with gate.hold(priority):
                order.append(name)

        first = asyncio.create_task(tile("cancelled", 3))
        await asyncio.sleep(0)
        second = asyncio.create_task(tile("next", 0))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        gate.release()
        await second
        async with gate.hold(0):  # free again afterwards
            order.append("after")
        return order

    assert asyncio.run(main()) == ["next", "after"]
