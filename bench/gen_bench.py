"""Generation serving benchmark: swarm's continuous-batching engine vs transformers generate().

    PYTHONPATH=. nice .venv/bin/python bench/gen_bench.py [--threads 2] [--new 128]

Same process, same run: builtin/smollm2 (SmolLM2-135M-Instruct Q4_1 GGUF, dequantized
FP32) on CPU. Swarm: the GenerationEngine (lean Llama forward, continuous batching)
at concurrency 1, 8 and 32, prompts of ~100 tokens, `--new` new tokens each (EOS
ignored so every request generates the same count). Per level: aggregate tokens/s,
TTFT p50/p99 and inter-token latency p50/p99. Baselines, same prompts: transformers
`generate()` one request at a time (a naive server) and static batches of 8 (left-
padded). RSS is read after the engine runs, before transformers loads. Needs
transformers + accelerate for the baselines (`--no-hf` skips them).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch

from swarm.node._generate import GenerationConfig, SamplingParams, load_smollm2

TEXT = ("the swarm routes requests to providers that advertise capacity and price while "
        "every node batches tokens for many users at once so that small models serve "
        "quickly on modest hardware across the network")
WORDS = TEXT.split(" ")


def prompt_text(i: int, words: int = 60) -> str:
    return f"Request {i}: summarize this. " + " ".join(
        WORDS[(i * 7 + j) % len(WORDS)] for j in range(words))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def engine_level(model: object, prompts: list[list[int]], new: int) -> dict[str, float]:
    engine = model.engine  # type: ignore[attr-defined]
    params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    ttft: list[float] = []
    gaps: list[float] = []

    async def one(prompt: list[int]) -> int:
        start = time.perf_counter()
        last = None
        count = 0
        async for delta in engine.submit(prompt, params):
            now = time.perf_counter()
            n = len(delta.token_ids)
            if last is None:
                ttft.append(now - start)
            else:
                gaps.extend([(now - last) / max(1, n)] * max(1, n))
            last = now
            count += n
        return count

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(p) for p in prompts)))
    wall = time.perf_counter() - t0
    return {"tok_s": tokens / wall, "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99),
            "itl_p50": pct(gaps, 0.5), "itl_p99": pct(gaps, 0.99), "wall": wall}


async def run_engine(levels: list[int], new: int) -> tuple[dict[int, dict[str, float]], float, float,
                                                              list[list[int]]]:
    model = load_smollm2(torch.device("cpu"), GenerationConfig(max_num_seqs=32, max_model_len=512))
    task = asyncio.create_task(model.engine.run())
    tok = model.tokenizer
    # whole chat prompts (template intact) of ~100 tokens
    prompts = [tok.chat_prompt([{"role": "user", "content": prompt_text(i)}]) for i in range(32)]
    print(f"prompt tokens: {min(map(len, prompts))}-{max(map(len, prompts))}", flush=True)
    # a lone request's prefill (warm), for the TTFT goal
    await engine_level(model, prompts[:1], 1)
    t0 = time.perf_counter()
    await engine_level(model, prompts[:1], 1)
    prefill = time.perf_counter() - t0
    results = {}
    for c in levels:
        results[c] = await engine_level(model, prompts[:max(c, 2 if c == 1 else c)]
                                        if c > 1 else prompts[:1], new)
        print(f"swarm c={c:2d}: {fmt(results[c])}", flush=True)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    rss = rss_mb()
    model.close()
    return results, prefill, rss, prompts


def fmt(r: dict[str, float]) -> str:
    return (f"{r['tok_s']:7.1f} tok/s  TTFT p50 {r['ttft_p50'] * 1e3:7.0f} ms p99 "
            f"{r['ttft_p99'] * 1e3:7.0f} ms  ITL p50 {r['itl_p50'] * 1e3:6.1f} ms p99 "
            f"{r['itl_p99'] * 1e3:6.1f} ms")


def run_hf(prompts: list[list[int]], new: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    from swarm.node._generate._llama import GGUF_NAME, smollm2_path

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=GGUF_NAME).eval()
    eos = model.generation_config.eos_token_id
    out = {}
    with torch.inference_mode():
        ids = torch.tensor([prompts[0]])
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                       pad_token_id=eos)
        out["naive_tok_s"] = new / (time.perf_counter() - t0)
        print(f"transformers generate() batch 1: {out['naive_tok_s']:.1f} tok/s", flush=True)
        width = max(len(p) for p in prompts[:8])
        pad = 2
        batch = torch.tensor([[pad] * (width - len(p)) + p for p in prompts[:8]])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts[:8]])
        t0 = time.perf_counter()
        model.generate(batch, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=pad)
        out["static8_tok_s"] = 8 * new / (time.perf_counter() - t0)
        print(f"transformers generate() static batch 8: {out['static8_tok_s']:.1f} tok/s",
              flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--no-hf", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results, prefill, rss, prompts = asyncio.run(run_engine([1, 8, 32], args.new))
    print(f"lone-request prefill (~100 tokens) + first token: {prefill * 1e3:.0f} ms; "
          f"RSS with the engine loaded: {rss:.0f} MB", flush=True)
    if not args.no_hf:
        hf = run_hf(prompts, args.new)
        print(f"c=32 / naive: {results[32]['tok_s'] / hf['naive_tok_s']:.1f}x; "
              f"c=1 / generate(): {results[1]['tok_s'] / hf['naive_tok_s']:.1f}x; "
              f"TTFT p50 c=8 / lone prefill: {results[8]['ttft_p50'] / prefill:.1f}x")


if __name__ == "__main__":
    main()
