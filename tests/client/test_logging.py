"""A library never talks over its host program (issue 11 item 14).

An SDK user configures no logging. When a provider dies (an expected event) their
stderr gets no libp2p ERROR lines, only the SDK's own word about it, once.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from swarm.simnet._testing import start_swarm
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

# The SDK user's program: it configures no logging, routes, and keeps routing while one
# of its providers is SIGKILLed and leaves its view.
PROGRAM = textwrap.dedent("""
    import asyncio, sys
    import numpy as np
    import swarm

    async def main() -> None:
        client = swarm.AsyncClient(bootstrap=sys.argv[1:], timeout=10)
        x = np.zeros((1, 512), np.float32)
        await client.infer("builtin/mlp", x)
        while len(client.router.view) < 2:
            await asyncio.sleep(0.05)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the parent killed a provider
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(client.router.view) > 1 and loop.time() < deadline:
            await client.infer("builtin/mlp", x)
            await asyncio.sleep(0.05)
        # Let the dead bootstrap peer's redials fail a few more times.
        for _ in range(40):
            await client.infer("builtin/mlp", x)
            await asyncio.sleep(0.05)
        print("view", len(client.router.view), flush=True)
        await client.close()

    asyncio.run(main())
""")


async def test_a_dead_provider_prints_no_libp2p_errors_in_an_sdk_program(tmp_path: Path) -> None:
    script = tmp_path / "user_program.py"
    script.write_text(PROGRAM)
    async with start_swarm(2, advert_interval=1.0, log_dir=tmp_path) as swarm:
        handles = [h for h in swarm.nodes if h is not None]
        addrs = [a for h in handles for a in h.p2p]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), *addrs, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdin is not None
            ready = asyncio.ensure_future(proc.stdout.readline())
            await wait_until(ready, timeout=60, what="the program's first routed request")
            assert ready.result() == b"ready\n", ready.result()
            await swarm.kill(1)  # SIGKILL: no goodbye advert, connections reset
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            finished = asyncio.ensure_future(proc.communicate())
            await wait_until(finished, timeout=90, what="the program to finish")
            out, err = finished.result()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stderr = err.decode(errors="replace")
        print(f"user program stderr ({len(stderr.splitlines())} lines):\n{stderr}")
        assert proc.returncode == 0, stderr
        assert out.decode().split() == ["view", "1"]
        assert "Failed to open TCP stream" not in stderr
        assert "ERROR" not in stderr.upper().replace("NO_ERROR", "")
        assert "Traceback" not in stderr
        dead = handles[1].peer_id[-8:]
        about_dead = [line for line in stderr.splitlines() if dead in line]
        assert len(about_dead) == 1, about_dead  # the SDK says it once
