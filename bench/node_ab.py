"""Paired A/B of swarm-node variants: the only comparison this shared VM resolves.

    git worktree add /tmp/before <rev>        # the other variant's code, if it is code
    .venv/bin/python bench/node_ab.py --rounds 5 --points minilm16,minilm64,mlp64,mlp1 \\
        before=/tmp/before after=.
    .venv/bin/python bench/node_ab.py base=. "pref32=.:--config /tmp/pref32.toml"

Every variant (NAME=ROOT[:NODE ARGS], ROOT a checkout whose `swarm` the node runs) is
started once and stays resident; each round drives every load point on every variant
in turn (the order reversed every other round), 4 s each, so that all variants see the
same moments of a machine whose speed drifts by a third within an hour. Prints, per
point, each variant's req/s and p99 by round and the median of the per-round ratios to
the first variant (two identical variants: 0.91-1.01 on this VM).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import node_bench as nb

PAYLOADS = {"mlp": lambda: [nb.mlp_request(i) for i in range(256)],
            "minilm": lambda: [nb.minilm_request(i) for i in range(64)]}


def parse_point(text: str) -> tuple[str, int]:
    model = text.rstrip("0123456789")
    if model not in PAYLOADS or model == text:
        raise argparse.ArgumentTypeError(f"a point is MODEL+CONCURRENCY (mlp64, minilm16), not {text!r}")
    return model, int(text[len(model):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", metavar="NAME=ROOT[:ARGS]")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--points", default="minilm16,minilm64,mlp64,mlp1")
    parser.add_argument("--seconds", type=float, default=4.0, help="per point and variant")
    args = parser.parse_args()
    points = [parse_point(p) for p in args.points.split(",")]
    payloads = {model: PAYLOADS[model]() for model, _ in points}
    nodes: list[tuple[str, Any]] = []
    results: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    try:
        for spec in args.variants:
            name, _, rest = spec.partition("=")
            root, _, extra = rest.partition(":")
            nb.ROOT = Path(root).resolve()  # the node runs `python -m` from there
            nodes.append((name, nb.NodeProcess(*extra.split())))
        for _, node in nodes:  # one short warm-up per point
            for model, conc in points:
                nb.drive(node.address, nb.INFER_PATH, payloads[model], conc, 2, warmup=0.5)
        for r in range(args.rounds):
            for model, conc in points:
                for name, node in nodes if r % 2 == 0 else nodes[::-1]:
                    x = nb.drive(node.address, nb.INFER_PATH, payloads[model], conc,
                                 args.seconds, warmup=0.5)
                    results.setdefault((model, conc), {}).setdefault(name, []).append(x)
    finally:
        for _, node in nodes:
            node.stop()
    first = nodes[0][0]
    for (model, conc), by in results.items():
        print(f"{model} c{conc}:")
        for name, runs in by.items():
            rps = [x["rps"] for x in runs]
            ratio = statistics.median(x["rps"] / b["rps"] for x, b in zip(runs, by[first], strict=True))
            print(f"  {name:12s} req/s {statistics.median(rps):7.0f} "
                  f"[{' '.join(f'{v:.0f}' for v in rps)}]  p99 ms "
                  f"{statistics.median(x['p99'] * 1e3 for x in runs):6.0f}  "
                  f"paired ratio to {first}: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
