"""Per-step decode cost: swarm's lean Llama forward vs transformers' forward, same GGUF.

    PYTHONPATH=. .venv/bin/python bench/gen_forward_bench.py [--threads 2] [--steps 10]

Both prefill a ~100-token prompt per sequence, then time single-token decode steps at
batch 1, 8 and 32 (transformers: forward() with its DynamicCache, as generate() runs it).
Needs transformers, accelerate and gguf (transformers' GGUF loading).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from swarm.node._generate._llama import GGUF_NAME, LeanLlama, read_gguf, smollm2_path

PROMPT = list(range(1000, 1100))  # 100 tokens


def lean(batches: list[int], steps: int) -> dict[int, float]:
    model = LeanLlama(read_gguf(smollm2_path()), torch.device("cpu"), slots=max(batches), max_len=512)
    out = {}
    for b in batches:
        for s in range(b):
            model.prefill(s, PROMPT, 0)
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            model.decode(list(range(b)), [42] * b, [len(PROMPT) + i] * b)
            times.append(time.perf_counter() - t0)
        out[b] = statistics.median(times)
    return out


def hf(batches: list[int], steps: int) -> dict[int, float]:
    from transformers import AutoModelForCausalLM, DynamicCache

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=GGUF_NAME).eval()
    out = {}
    with torch.inference_mode():
        for b in batches:
            cache = DynamicCache()
            ids = torch.tensor([PROMPT] * b)
            model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                model(input_ids=torch.full((b, 1), 42), past_key_values=cache, use_cache=True)
                times.append(time.perf_counter() - t0)
            out[b] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [1, 8, 32]
    mine = lean(batches, args.steps)
    theirs = hf(batches, args.steps)
    print("batch  lean ms/step  transformers ms/step  speed-up")
    for b in batches:
        print(f"{b:5d}  {mine[b] * 1e3:12.1f}  {theirs[b] * 1e3:20.1f}  {theirs[b] / mine[b]:8.1f}x")


if __name__ == "__main__":
    main()
