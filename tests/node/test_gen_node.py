"""builtin/smollm2 served by a real `swarm-node run`: OpenAI HTTP, gRPC streams, SDK, CLI.

One node process for the module (the model loads once); few tokens per request.
Texts are compared only with this node's own greedy output.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import swarm
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

MODEL = "builtin/smollm2"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
START_TIMEOUT = 300.0  # a generous bound: a loaded 2-core CI machine loads slowly


def _command() -> list[str]:
    script = Path(sys.executable).parent / "swarm-node"
    return [str(script)] if script.exists() else [sys.executable, "-m", "swarm.node._cli"]


class NodeProcess:
    def __init__(self, proc: subprocess.Popen[bytes], fields: dict[str, str]) -> None:
        self.proc = proc
        self.base_url = fields.get("openai", "")
        self.metrics = fields.get("metrics", "")
        self.grpc = fields["grpc"]
        self.p2p = fields.get("p2p", "")

    def scrape(self, name: str) -> float:
        text = httpx.get(self.metrics, timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


def start_node(data: Path, *args: str, want: set[str]) -> NodeProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env["SWARM_TORCH_THREADS"] = "1"
    data.mkdir(parents=True, exist_ok=True)
    with (data / "stderr.log").open("wb") as log:
        proc = subprocess.Popen(
            [*_command(), "run", "--data-dir", str(data), "--grpc-port", "0",
             "--metrics-port", "0", "--listen-host", "127.0.0.1", *args],
            stdout=subprocess.PIPE, stderr=log, env=env)
    fields: dict[str, str] = {}
    deadline = time.monotonic() + START_TIMEOUT
    assert proc.stdout is not None
    try:
        while not want <= fields.keys():
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise AssertionError("swarm-node did not serve:\n"
                                     + (data / "stderr.log").read_text()[-3000:])
            text = line.decode().rstrip()
            if text.startswith("  "):
                key, _, value = text.strip().partition("  ")
                fields.setdefault(key, value.strip())
    except BaseException:
        stop_node(proc)
        raise
    return NodeProcess(proc, fields)


def stop_node(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    started = start_node(tmp_path_factory.mktemp("node"), "--p2p-port", "0", "--http-port", "0",
                         "--serve", MODEL, "--generation-max-len", "1024",
                         "--generation-kv-tokens", "8192", "--generation-max-seqs", "8",
                         want={"openai", "metrics", "grpc", "p2p"})
    yield started
    stop_node(started.proc)


@pytest.fixture(scope="module")
def client(node: NodeProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=node.base_url, api_key="unused", max_retries=0,
                       timeout=60) as c:
        yield c


def test_chat_completion_greedy_is_sensible_and_repeats(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model=MODEL, messages=FRANCE,  # type: ignore[arg-type]
                                           max_tokens=10, temperature=0)
    choice = first.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert first.usage is not None
    assert first.usage.completion_tokens <= 10
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    again = client.chat.completions.create(model=MODEL, messages=FRANCE,  # type: ignore[arg-type]
                                           max_completion_tokens=10, temperature=0)
    assert again.choices[0].message.content == choice.message.content


def test_chat_stream_with_usage_matches_the_whole_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=FRANCE,  # type: ignore[arg-type]
                                           max_tokens=6, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=FRANCE, max_tokens=6, temperature=0,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" or finishes[-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_completions_stream_and_not(client: openai.OpenAI, node: NodeProcess) -> None:
    whole = client.completions.create(model=MODEL, prompt="The capital of France is",
                                      max_tokens=4, temperature=0, logprobs=1)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 4
    assert whole.choices[0].logprobs is not None
    assert all(lp <= 0 for lp in whole.choices[0].logprobs.token_logprobs or [])
    parts = list(client.completions.create(model=MODEL, prompt="The capital of France is",
                                           max_tokens=4, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    # the raw SSE ends with [DONE]
    raw = httpx.post(f"{node.base_url}/completions", timeout=60, json={
        "model": MODEL, "prompt": "Hi", "max_tokens": 2, "stream": True})
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_seed_stop_and_sampling_fields(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 5,
                          "temperature": 0.9, "top_p": 0.9, "seed": 11}
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    assert a == b
    greedy = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=6,
                                       temperature=0).choices[0]
    stop = greedy.text.strip()[:1]
    cut = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=6,
                                    temperature=0, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": FRANCE, "max_tokens": 0}, "max_tokens"),
    ({"messages": FRANCE, "max_tokens": 10**9}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi " * 5000}]}, "messages"),
    ({"messages": FRANCE, "n": 2}, "n"),
    ({"messages": FRANCE, "tools": [], "frequency_penalty": 0.5}, "frequency_penalty"),
    ({"messages": FRANCE, "temperature": 5}, "temperature"),
    ({"messages": FRANCE, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": FRANCE, "stream_options": {"include_usage": True}}, "stream_options"),
])
def test_bad_chat_requests_get_400_naming_the_field(node: NodeProcess, body: dict[str, Any],
                                                    param: str) -> None:
    r = httpx.post(f"{node.base_url}/chat/completions", json={"model": MODEL, **body}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param
    if param == "frequency_penalty":
        assert "tools" in error["message"]
        assert "frequency_penalty" in error["message"]


def test_generation_limits_from_flags_apply(node: NodeProcess) -> None:
    """--generation-max-len 1024: 1000 new tokens after the prompt no longer fit (the
    default context of 2048 would take them)."""
    r = httpx.post(f"{node.base_url}/chat/completions", timeout=30,
                   json={"model": MODEL, "messages": FRANCE, "max_tokens": 1000})
    assert r.status_code == 400, r.text
    assert "1024" in r.json()["error"]["message"]


def test_unknown_model_and_bad_json(node: NodeProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no/such", messages=FRANCE)  # type: ignore[arg-type]
    r = httpx.post(f"{node.base_url}/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400
    models = {m.id for m in client.models.list()}
    assert MODEL in models


async def test_client_leaving_mid_stream_frees_its_slot(node: NodeProcess) -> None:
    story = [{"role": "user", "content": "Write a very long story about dragons."}]
    body = {"model": MODEL, "messages": story, "max_tokens": 500, "stream": True,
            "temperature": 0}
    with httpx.stream("POST", f"{node.base_url}/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            assert line != "data: [DONE]", "the story ended before the client left"
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get(
                    "content"):
                break
        assert node.scrape("vllm:num_requests_running") == 1
    await wait_until(lambda: node.scrape("vllm:num_requests_running") == 0, timeout=20,
                     what="the abandoned sequence to leave the batch")
    assert node.scrape("vllm:generation_tokens_total") < 400
    assert node.scrape("vllm:time_to_first_token_seconds_count") >= 1


def test_grpc_stream_is_a_triton_decoupled_model(node: NodeProcess) -> None:
    import numpy as np
    import tritonclient.grpc as tc

    received: queue.Queue[Any] = queue.Queue()
    client = tc.InferenceServerClient(node.grpc)
    try:
        client.start_stream(callback=lambda result, error: received.put(error or result))
        text = tc.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"The capital of France is"], dtype=object))
        client.async_stream_infer(MODEL, [text], parameters={"max_tokens": 5, "temperature": 0.0})
        chunks = []
        while True:
            result = received.get(timeout=60)
            assert not isinstance(result, Exception), result
            chunks.append(result.as_numpy("text_output")[0].decode())
            params = result.get_response().parameters
            if "triton_final_response" in params:
                assert params["triton_final_response"].bool_param
                assert params["finish_reason"].string_param == "length"
                assert params["completion_tokens"].int64_param == 5
                break
        assert len(chunks) >= 2  # one response per chunk, not one answer
    finally:
        client.stop_stream()
        client.close()
    with swarm.Client(node.grpc) as sdk:
        assert "".join(sdk.generate(MODEL, "The capital of France is", max_tokens=5)) \
            == "".join(chunks)


def test_sdk_chat_and_generate(node: NodeProcess, client: openai.OpenAI) -> None:
    reference = client.chat.completions.create(model=MODEL, messages=FRANCE,  # type: ignore[arg-type]
                                               max_tokens=8, temperature=0)
    with swarm.Client(node.grpc) as sdk:
        chunks = list(sdk.chat(MODEL, FRANCE, max_tokens=8))
        assert "".join(chunks) == reference.choices[0].message.content
        # leaving early cancels the generation on the node
        for _ in sdk.generate(MODEL, "Tell me a long story.", max_tokens=300):
            break
        with pytest.raises(swarm.InvalidInputError):
            list(sdk.chat(MODEL, [{"role": "wizard", "content": "hi"}]))


async def test_sdk_chat_chunks_name_the_provider_and_the_finish(node: NodeProcess) -> None:
    """chat_chunks: what chat streams, chunk by chunk, with the token ids behind each, the
    provider that sent it and, on the last, the finish reason (simnet measures with it)."""
    async with swarm.AsyncClient(node.grpc, timeout=60) as sdk:
        text = "".join([t async for t in sdk.chat(MODEL, FRANCE, max_tokens=6)])
        chunks = [c async for c in sdk.chat_chunks(MODEL, FRANCE, max_tokens=6)]
    assert "".join(c.text for c in chunks) == text
    assert {c.endpoint for c in chunks} == {node.grpc}
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].finish_reason in ("stop", "length")
    assert all(c.finish_reason is None for c in chunks[:-1])
    tokens = sum(len(c.token_ids) for c in chunks)
    assert 1 <= tokens <= 6
    assert (tokens == 6) == (chunks[-1].finish_reason == "length")


async def test_async_sdk_through_a_gateway_that_does_not_serve_it(
        node: NodeProcess, tmp_path: Path) -> None:
    gateway = start_node(tmp_path / "gw", "--p2p-port", "0", "--bootstrap", node.p2p,
                         "--http-port", "0", want={"grpc", "openai"})
    try:
        async with swarm.AsyncClient(gateway.grpc, timeout=60) as sdk:
            async def answer() -> str:
                try:
                    return "".join([t async for t in sdk.chat(MODEL, FRANCE, max_tokens=8)])
                except swarm.SwarmError:
                    return ""

            text = ""

            async def routed() -> bool:
                nonlocal text
                text = await answer()
                return bool(text)

            await wait_until(routed, timeout=30, what="the gateway to route to the provider")
        assert "Paris" in text
        # the OpenAI API of the gateway relays too, streamed and not
        with openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0,
                           timeout=60) as via:
            whole = via.chat.completions.create(model=MODEL, messages=FRANCE,  # type: ignore[arg-type]
                                                max_tokens=8, temperature=0)
            assert whole.choices[0].message.content == text
            assert whole.usage is not None
            assert whole.usage.completion_tokens >= 1
            streamed = via.chat.completions.create(
                model=MODEL, messages=FRANCE, max_tokens=8, temperature=0,  # type: ignore[arg-type]
                stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text
            with pytest.raises(openai.BadRequestError):  # the provider's refusal, as a 400
                via.chat.completions.create(model=MODEL, messages=FRANCE,  # type: ignore[arg-type]
                                            max_tokens=10**9)
    finally:
        stop_node(gateway.proc)


def test_swarm_chat_command(node: NodeProcess) -> None:
    script = Path(sys.executable).parent / "swarm"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "swarm.cli"]
    done = subprocess.run([*cmd, "chat", MODEL, "--node", node.grpc, "--max-tokens", "8"],
                          input="What is the capital of France?\n\n", capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout


def test_kserve_generate_extension(node: NodeProcess) -> None:
    root = node.base_url.removesuffix("/v1")
    body = {"text_input": "The capital of France is",
            "parameters": {"max_tokens": 4, "temperature": 0}}
    r = httpx.post(f"{root}/v2/models/{MODEL}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model_name"] == MODEL
    assert answer["finish_reason"] == "length"
    events = []
    with httpx.stream("POST", f"{root}/v2/models/{MODEL}/generate_stream", json=body,
                      timeout=60) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert "".join(e["text_output"] for e in events) == answer["text_output"]
    assert events[-1]["finish_reason"] == "length"
    bad = httpx.post(f"{root}/v2/models/{MODEL}/generate",
                     json={"text_input": "x", "parameters": {"beam_width": 4}}, timeout=10)
    assert bad.status_code == 400
    assert "beam_width" in bad.json()["error"]


# Last in the module: it may SIGKILL the module's node.
async def test_stream_resumes_on_another_provider_when_one_is_killed(
        node: NodeProcess, tmp_path: Path) -> None:
    story = [{"role": "user", "content": "Write a long story about dragons."}]
    with swarm.Client(node.grpc) as direct:  # the uninterrupted greedy answer
        reference = "".join(direct.chat(MODEL, story, max_tokens=24))
    second = start_node(tmp_path / "b", "--p2p-port", "0", "--bootstrap", node.p2p,
                        "--serve", MODEL, want={"grpc", "p2p", "metrics"})
    try:
        async with swarm.AsyncClient(bootstrap=[node.p2p], timeout=120) as sdk:
            await sdk.start()
            await wait_until(lambda: len(sdk.router.view.providers_of_name(MODEL)) == 2,
                             timeout=30, what="the client to see both providers")
            stream = sdk.chat(MODEL, story, max_tokens=24)
            parts = [await anext(stream)]
            victim = node if node.scrape("vllm:num_requests_running") == 1 else second
            assert victim.scrape("vllm:num_requests_running") == 1
            victim.proc.kill()
            victim.proc.wait()
            parts += [text async for text in stream]
            # Routing by tokens learnt from both streams: the broken one counts against
            # its provider, the finished one is a tokens/s sample; none is left open.
            seen = sdk.router.observations.snapshot()
            digest = sdk.router.resolve(MODEL)
            assert sorted(seen.get(p).last_failure is not None for p in seen) == [False, True]
            assert [seen.get(p).stream_rate_for(digest)[2] for p in seen
                    if seen.get(p).last_failure is None] == [1]
            assert all(not seen.get(p).streaming for p in seen)
        assert "".join(parts) == reference
    finally:
        stop_node(second.proc)
