""".venv/bin/python bench/route_share.py REPORT_DIR [REPORT_DIR ...]   # [--gap-window 3]

How evenly a `swarm simnet up` run spread its requests over the nodes (issue 14: "share among
equal nodes within a factor of 1.5 of each other over 30 s, and no provider of a model left at
0% for more than a few seconds"). Reads the report folder's report.json and prints, per model
and over all models:

  share     each node's fraction of the model's successful requests;
  max/min   the largest share over the smallest (inf when a node got none);
  idle s    per node, the longest stretch of the run (from the first answer of the model to its
            last) during which that node answered none of the model's requests;
  windows   over consecutive windows of --gap-window seconds, how many had some node answer none
            of the model's requests (at ~10 req/s per model and 4 nodes, a window of 3 s holds
            ~30 requests, so a fair spread leaves a node empty by chance in ~0.1% of windows).

Exits 1 when max/min over all models exceeds 1.5 or some node idles longer than 5 s for a model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

MAX_RATIO = 1.5
MAX_IDLE_S = 5.0


def analyze(report: dict, window: float) -> tuple[list[str], float, float]:
    """Lines to print, the overall max/min share ratio, the longest idle stretch (s)."""
    done = [r for r in report["requests"] if r["outcome"] == "ok" and r["node"] is not None]
    by_model: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for r in done:
        by_model[r["model"]].append((r["scheduled"] + r["latency"], r["node"]))
    serving = _serving(report)
    # Nodes that serve none of the requests' models (the demo's chat nodes) are left out;
    # a node that serves a model and answered none of it counts (at 0%).
    nodes = sorted({r["node"] for r in done}
                   | {n for model in by_model for n in serving.get(model, set())})
    lines = ["| model | " + " | ".join(f"node {n}" for n in nodes)
             + " | max/min | longest idle s (node) | windows with an idle node |",
             "| --- | " + " | ".join("---:" for _ in nodes) + " | ---: | ---: | ---: |"]
    worst_idle = 0.0
    for model, answers in sorted(by_model.items()):
        answers.sort()
        mine = sorted(serving.get(model, set()) | {n for _, n in answers})
        counts = {n: 0 for n in mine}
        for _, n in answers:
            counts[n] += 1
        total = len(answers)
        first, last = answers[0][0], answers[-1][0]
        idle = {}
        for n in mine:
            times = [first] + [t for t, m in answers if m == n] + [last]
            idle[n] = max(b - a for a, b in itertools.pairwise(times))
        node, longest = max(idle.items(), key=lambda kv: kv[1])
        worst_idle = max(worst_idle, longest)
        spans = max(1, math.floor((last - first) / window))
        empty = 0
        for w in range(spans):
            lo, hi = first + w * window, first + (w + 1) * window
            seen = {m for t, m in answers if lo <= t < hi}
            empty += any(n not in seen for n in mine)
        lines.append(f"| {model} | " + " | ".join(
            f"{counts[n] / total:.0%}" if n in counts else "-" for n in nodes)
                     + f" | {_ratio(counts)} | {longest:.1f} ({node}) | {empty}/{spans} |")
    counts = {n: 0 for n in nodes}
    for r in done:
        counts[r["node"]] += 1
    total = max(1, sum(counts.values()))
    lines.append("| all | " + " | ".join(f"{counts[n] / total:.0%}" for n in nodes)
                 + f" | {_ratio(counts)} | | |")
    lo = min(counts.values())
    return lines, (max(counts.values()) / lo if lo else math.inf), worst_idle


def _serving(report: dict) -> dict[str, set[int]]:
    """Model name -> the nodes that serve it (any incarnation), from the report's node specs."""
    serving: dict[str, set[int]] = defaultdict(set)
    for node in report.get("nodes", []):
        for model in node["spec"]["models"]:
            serving[model].add(int(node["index"]))
    return serving


def _ratio(counts: dict[int, int]) -> str:
    lo = min(counts.values())
    return f"{max(counts.values()) / lo:.2f}" if lo else "inf"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--gap-window", type=float, default=3.0, help="seconds per window")
    args = ap.parse_args(argv)
    ok = True
    for folder in args.reports:
        report = json.loads((folder / "report.json").read_text())
        lines, ratio, idle = analyze(report, args.gap_window)
        print(f"{folder}\n")
        print("\n".join(lines))
        verdict = ratio <= MAX_RATIO and idle <= MAX_IDLE_S
        print(f"\n- max/min share over all models {ratio:.2f} (target <= {MAX_RATIO}), longest idle "
              f"{idle:.1f} s (target <= {MAX_IDLE_S:g}): {'met' if verdict else 'MISSED'}\n")
        ok = ok and verdict
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
