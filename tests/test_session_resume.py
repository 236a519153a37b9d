"""relay.session._resume: a coroutine started by hand finishes as a task would have run it."""

import asyncio

import pytest

from relay.session import _resume


def start(coro):
    """What ClientSession._start_drain does: run to the first wait, then hand over to a task."""
    try:
        waiting = coro.send(None)
    except StopIteration as e:
        return e.value
    return asyncio.get_running_loop().create_task(_resume(coro, waiting))


async def test_sync_completion_needs_no_task():
    async def quick():
        return 7

    assert start(quick()) == 7


async def test_waits_on_futures_sleeps_and_wait_for():
    log = []

    async def slow():
        loop = asyncio.get_running_loop()
        f = loop.create_future()
        loop.call_later(0.02, f.set_result, 5)
        log.append(await asyncio.wait_for(f, 1))
        await asyncio.sleep(0)  # a bare yield
        await asyncio.sleep(0.01)
        g = loop.create_future()
        loop.call_soon(g.set_exception, ValueError("boom"))
        try:
            await g
        except ValueError as e:
            log.append(str(e))
        log.append("end")

    await start(slow())
    assert log == [5, "boom", "end"]


async def test_cancelling_the_task_cancels_the_coroutine():
    cleaned = asyncio.Event()

    async def forever():
        try:
            await asyncio.sleep(0.01)
            await asyncio.sleep(60)
        finally:
            cleaned.set()

    task = start(forever())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()
