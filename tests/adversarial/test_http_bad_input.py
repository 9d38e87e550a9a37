"""Issue 11 item 8: hostile HTTP bodies get a 4xx in OpenAI's error shape, never a 500."""

from __future__ import annotations

import io
from typing import Any

import aiohttp

from swarm.node import Node
from swarm.node._runtime import Model

MAX_BODY = 1 << 20

# (case, body, the status it must get)
CASES: list[tuple[str, bytes, int]] = [
    ("100,000 nested [", b"[" * 100_000, 400),
    ("100,000 nested {", b'{"a":' * 100_000, 400),
    ("nesting inside a string is text", b'{"model": "builtin/minilm", "input": "' + b"[" * 10_000
     + b'"}', 200),
    ("nested input", b'{"model": "builtin/minilm", "input": [[[["x"]]]]}', 400),
    ("lone surrogate in model", b'{"model": "\\ud800", "input": "x"}', 400),
    ("lone surrogate in input", b'{"model": "builtin/minilm", "input": "a\\udfffb"}', 400),
    ("lone surrogate in a list", b'{"model": "builtin/minilm", "input": ["ok", "\\ud800"]}', 400),
    ("not UTF-8", b'{"model": "builtin/minilm", "input": "\xff\xfe"}', 400),
    ("not JSON", b"{'model': 1}", 400),
    ("too large", b'{"model": "builtin/minilm", "input": "' + b"x" * MAX_BODY + b'"}', 413),
]


async def test_hostile_http_bodies_get_400(start_node: Any, minilm: Model) -> None:
    async with start_node([minilm], http_port=0, http_max_body_bytes=MAX_BODY) as node, \
            aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{node.http_port}/v1"
        for case, body, status in CASES:
            async with http.post(f"{base}/embeddings", data=io.BytesIO(body),
                                 headers={"Content-Type": "application/json"}) as response:
                answer = await response.json()
                assert response.status == status, (case, answer)
                if status != 200:
                    error = answer["error"]
                    assert error["message"], case
                    assert error["type"] == "invalid_request_error", case
                    assert "Traceback" not in error["message"], case
        for path in ("/models/%ED%A0%80", "/models/acme%2F%00", "/nowhere"):
            async with http.get(base + path) as response:
                assert response.status == 404, path
                assert (await response.json())["error"]["message"], path
        async with http.post(f"{base}/embeddings",
                             json={"model": "builtin/minilm", "input": "hello"}) as response:
            assert response.status == 200  # the node serves on
        text = _metrics(node)
        for reason in ("body_size", "json_depth", "encoding"):
            assert f'swarm_http_rejected_total{{reason="{reason}"}}' in text, reason


def _metrics(node: Node) -> str:
    return node.metrics.render().decode()
