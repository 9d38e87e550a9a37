"""How simnet runs a node: `python -m swarm.simnet._child PARENT_PID run ...`.

The node dies with simnet: before running `swarm-node` (with the remaining
arguments) it asks the kernel for SIGKILL when its parent exits
(PR_SET_PDEATHSIG, Linux), so not even a SIGKILLed simnet leaves nodes behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    parent = int(argv[0])
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return 70  # simnet died before the request took effect
    from swarm.node import main as node_main

    return node_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
