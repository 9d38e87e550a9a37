"""Process checks shared by the simnet tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable
from pathlib import Path


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of `pid` (R, S, T, Z, ...), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pids: Iterable[int]) -> list[int]:
    """Pids that still exist and are not zombies."""
    return [pid for pid in pids if process_state(pid) not in (None, "Z")]


def nodes_started_by(parent: int) -> list[int]:
    """Live node processes a simnet process `parent` started (`-m swarm.simnet._child PARENT`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:4] == [b"-m", b"swarm.simnet._child", str(parent).encode()]:
            found.append(int(entry.name))
    return alive(found)


async def wait_until_gone(pids: Iterable[int], timeout: float = 15.0) -> list[int]:
    """Wait (on pidfds: no polling) until none of `pids` runs or the time is up; return those
    still alive."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            for pid in pids:
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue
                try:
                    if process_state(pid) in (None, "Z"):
                        continue
                    exited = loop.create_future()
                    loop.add_reader(fd, exited.set_result, None)
                    try:
                        await exited  # a pidfd turns readable when its process ends
                    finally:
                        loop.remove_reader(fd)
                finally:
                    os.close(fd)
    return alive(pids)
