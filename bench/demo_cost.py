"""What one scenario costs CI: the run `tests/simnet/test_shipped_scenarios.py` does
(the scenario with its timeline compressed to 12 s of workload), timed in wall and CPU
seconds (getrusage of this process and of the node processes it started and reaped).

    .venv/bin/python bench/demo_cost.py default
    .venv/bin/python bench/demo_cost.py path/to/scenario.toml    # e.g. an older default

CPU seconds move less than wall time on a shared machine; it reports, it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

from rich.console import Console

from swarm.simnet import RunOptions, load_scenario, run_scenario
from tests.simnet.test_shipped_scenarios import _BUDGET, compressed


async def measure(ref: str) -> str:
    started = time.monotonic()
    scenario = compressed(load_scenario(ref), _BUDGET)
    with tempfile.TemporaryDirectory() as tmp, (Path(tmp) / "console.txt").open("w") as out:
        result = await run_scenario(
            scenario, RunOptions(report_dir=Path(tmp) / "report", live=False),
            console=Console(file=out, width=120))
    wall = time.monotonic() - started
    me = resource.getrusage(resource.RUSAGE_SELF)
    nodes = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + nodes.ru_utime + nodes.ru_stime
    s = result.summary
    line = (f"{ref}: wall {wall:.1f} s, cpu {cpu:.1f} s (nodes {nodes.ru_utime + nodes.ru_stime:.1f}), "
            f"kept {s.kept}, requests {s.ok}/{s.requests}, p99 {s.latency.p99:.0f} ms")
    if s.chat is not None:
        line += (f", chats {s.chat.ok}/{s.chat.chats}, TTFT p99 {s.chat.ttft.p99:.0f} ms, "
                 f"ITL p50/p99 {s.chat.itl.p50:.0f}/{s.chat.itl.p99:.0f} ms")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", help="a shipped scenario's name or a scenario file")
    print(asyncio.run(measure(parser.parse_args().scenario)), flush=True)


if __name__ == "__main__":
    main()
