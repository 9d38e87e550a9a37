"""Reduced precision for builtin/smollm2 on CPU: decode speed and quality vs FP32.

    PYTHONPATH=. nice .venv/bin/python bench/gen_precision_bench.py [--threads 1] [--steps 8]

Loads the lean forward three times in one process, same GGUF: `fp32` (every matrix
dequantized to FP32), `bf16` (matrices in bf16, bf16 activations into them; norms,
residual, attention and KV cache FP32) and `int4` (the file's own Q4_1 blocks packed
for torch's int4 kernel when a pass has <= 16 rows, a bf16 copy otherwise; head bf16).
Speed: decode steps at batch 1, 8 and 32 after a 100-token prefill, timed round-robin
across the variants so that a loaded machine slows them alike (median ms per step) and
a 100-token prefill. Quality: perplexity of a few fixed texts, scored token by token
through the decode path (the path generation uses), and the greedy continuation of a
chat prompt compared with FP32's.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from swarm.node._generate._llama import LeanLlama, read_gguf, smollm2_path
from swarm.node._generate._tokenizer import ChatTokenizer

VARIANTS = ("fp32", "bf16", "int4")
TEXTS = (
    "The capital of France is Paris. It is known for the Eiffel Tower, the Louvre museum "
    "and its cafes along the river Seine.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + "
    "fibonacci(n - 2)\n",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon "
    "dioxide to make glucose and release oxygen.",
)
PROMPT = list(range(1000, 1100))


def perplexity(model: LeanLlama, ids: list[int]) -> float:
    nll = 0.0
    for pos in range(len(ids) - 1):
        logits = model.decode([0], [ids[pos]], [pos])[0]
        nll -= float(torch.log_softmax(logits.float(), -1)[ids[pos + 1]])
    return math.exp(nll / (len(ids) - 1))


def greedy(model: LeanLlama, prompt: list[int], new: int) -> list[int]:
    out = [int(torch.argmax(model.prefill(0, prompt, 0)))]
    for i in range(new - 1):
        out.append(int(torch.argmax(model.decode([0], [out[-1]], [len(prompt) + i])[0])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-speed", action="store_true", help="quality only")
    parser.add_argument("--no-quality", action="store_true", help="speed only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    contents = read_gguf(smollm2_path())
    tok = ChatTokenizer(contents.metadata)
    models = {v: LeanLlama(contents, torch.device("cpu"), slots=32, max_len=512, weights=v)
              for v in VARIANTS}
    assert models["int4"].weights == "int4"
    if not args.no_speed:
        speed(models, args.steps)
    if not args.no_quality:
        quality(models, tok)


def speed(models: dict[str, LeanLlama], steps: int) -> None:
    print("variant  " + "  ".join(f"b={b:<2d} ms/step" for b in (1, 8, 32))
          + "  prefill100 ms", flush=True)
    times: dict[str, dict[int, list[float]]] = {v: {} for v in VARIANTS}
    prefill: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for b in (1, 8, 32):
        for m in models.values():
            for s in range(b):
                m.prefill(s, PROMPT, 0)
        for i in range(steps):
            for v, m in models.items():
                t0 = time.perf_counter()
                m.decode(list(range(b)), [42] * b, [len(PROMPT) + i] * b)
                times[v].setdefault(b, []).append(time.perf_counter() - t0)
    for _ in range(3):
        for v, m in models.items():
            t0 = time.perf_counter()
            m.prefill(0, PROMPT, 0)
            prefill[v].append(time.perf_counter() - t0)
    for v in VARIANTS:
        cells = "  ".join(f"{statistics.median(times[v][b]) * 1e3:13.1f}" for b in (1, 8, 32))
        print(f"{v:7s}  {cells}  {statistics.median(prefill[v]) * 1e3:13.0f}", flush=True)


def quality(models: dict[str, LeanLlama], tok: ChatTokenizer) -> None:
    texts = [tok.encode(t) for t in TEXTS]
    chat = tok.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    reference = greedy(models["fp32"], chat, 24)
    print("variant  perplexity per text (decode path)       greedy 24 tokens == fp32")
    for v, m in models.items():
        ppl = [perplexity(m, ids) for ids in texts]
        mine = greedy(m, chat, 24)
        same = next((i for i, (a, b) in enumerate(zip(mine, reference, strict=True)) if a != b),
                    len(reference))
        print(f"{v:7s}  {'  '.join(f'{p:8.3f}' for p in ppl)}   "
              f"first {same}/24 tokens equal: {tok.decode(mine)!r}", flush=True)


if __name__ == "__main__":
    main()
