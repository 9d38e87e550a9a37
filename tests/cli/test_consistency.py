"""Issue 17 items 6 and 7: one output key, one unit, one word and honest counts across commands."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from swarm.cli import main as swarm_main
from swarm.cli._client import DEFAULT_NODE
from swarm.cli._client_commands import _client
from swarm.cli._main import _parser
from swarm.cli._simnet import _up_scenario
from swarm.client import AsyncClient, Client
from swarm.node._cli import _config as node_config
from swarm.node._cli import _parser as node_parser
from swarm.node._runtime import Model
from swarm.simnet._report import render_summary, summarize
from swarm.simnet._scenario import Promises
from swarm.simnet._workload import OK, RequestRecord

SWARM = (sys.executable, "-m", "swarm.cli")


async def swarm(*argv: str, timeout: float = 60.0) -> tuple[int, str, str]:
    """`swarm ARGV` in a process of its own (stdout is a pipe, as in a script)."""
    proc = await asyncio.create_subprocess_exec(
        *SWARM, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# ------------------------------------------------------------------ swarm infer / served


async def test_infer_keys_outputs_by_their_names_for_every_input_flag(
        start_node: Any, minilm: Model, tmp_path: Path) -> None:
    lines = tmp_path / "texts.jsonl"
    lines.write_text('"hello"\n"world"\n')
    async with start_node([minilm]) as node:
        address = node.grpc_address
        (t, text, terr), (f, file, ferr), (j, js, jerr) = await asyncio.gather(
            swarm("infer", "--node", address, "builtin/minilm", "--text", "hello"),
            swarm("infer", "--node", address, "builtin/minilm", "--file", str(lines)),
            swarm("infer", "--node", address, "builtin/minilm", "--json", '"hello"'))
    assert (t, f, j) == (0, 0, 0), (terr, ferr, jerr)
    from_text, from_json = json.loads(text), json.loads(js)
    from_file = [json.loads(line) for line in file.splitlines()]
    assert len(from_file) == 2
    for outputs in (from_text, from_json, *from_file):
        assert list(outputs) == ["embedding"]  # the model's output name, never "output"
    np.testing.assert_allclose(from_file[0]["embedding"], from_text["embedding"], atol=1e-6)


async def test_infer_and_served_default_to_the_local_node() -> None:
    """As ollama does: no --node and no --bootstrap means the node on this machine."""
    assert DEFAULT_NODE == "127.0.0.1:7070"
    for argv in (["infer", "builtin/minilm", "--text", "hi"], ["served"]):
        args = _parser().parse_args(argv)
        args.max_price = getattr(args, "max_price", None)
        args.preference = getattr(args, "preference", None)
        client = _client(args)
        try:
            assert client.address == DEFAULT_NODE
            assert not client.in_swarm
        finally:
            await client.close()


def test_preference_is_one_word_in_the_sdk_and_the_cli() -> None:
    args = _parser().parse_args(["infer", "--bootstrap", "/ip4/x", "builtin/mlp", "--json", "[1]",
                                 "--preference", "price"])
    assert args.preference == "price"
    old = _parser().parse_args(["infer", "--bootstrap", "/ip4/x", "builtin/mlp", "--json", "[1]",
                                "--prefer", "0.7"])  # the old spelling still works
    assert old.preference == "0.7"
    for method in (AsyncClient.__init__, AsyncClient.infer, AsyncClient.map, AsyncClient.embed,
                   Client.__init__, Client.infer, Client.map, Client.embed):
        assert "preference" in inspect.signature(method).parameters, method


async def test_served_lists_whole_digests_in_a_pipe_and_models_is_its_old_name(
        start_node: Any, mlp: Model) -> None:
    async with start_node([mlp]) as node:
        address = node.grpc_address
        (code, out, err), (old, old_out, old_err) = await asyncio.gather(
            swarm("served", "--node", address), swarm("models", "--node", address, "--json"))
    assert code == 0, err
    assert str(mlp.digest) in out  # not cut to 19 characters: a script reads it
    assert f"served by {address}" in out
    assert "is now `swarm served`" not in err
    assert old == 0, old_err
    assert "`swarm models` is now `swarm served`" in old_err
    assert json.loads(old_out)[0]["versions"] == [str(mlp.digest)]


# ------------------------------------------------------------------ swarm-node: one unit


def test_queue_delay_is_in_seconds_on_the_command_line_as_in_the_file(
        capsys: pytest.CaptureFixture[str]) -> None:
    seconds = node_config(node_parser().parse_args(["run", "--max-queue-delay", "0.005"]))
    assert seconds.model_options("builtin/mlp").max_queue_delay == 0.005
    assert capsys.readouterr().err == ""
    old = node_config(node_parser().parse_args(["run", "--max-queue-delay-ms", "5"]))
    assert old.model_options("builtin/mlp").max_queue_delay == 0.005
    assert "--max-queue-delay-ms is deprecated: use --max-queue-delay SECONDS" in \
        capsys.readouterr().err
    shown = node_parser()._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]
    assert "--max-queue-delay SECONDS" in shown
    assert "-ms" not in shown


# ------------------------------------------------------------------ simnet


def test_an_overridden_scenario_is_not_described_by_its_file() -> None:
    args = _parser().parse_args(["simnet", "up", "--scenario", "default", "--nodes", "2"])
    scenario = _up_scenario(args)
    assert scenario.node_count == 2
    assert "4 nodes" not in scenario.description
    assert scenario.description == "builtin:default with nodes 2 (not 4)"
    same = _up_scenario(_parser().parse_args(["simnet", "up", "--scenario", "default"]))
    assert same.description.startswith("4 nodes serving")  # as written, when nothing changed


def test_an_interrupted_run_judges_no_promise() -> None:
    records = [RequestRecord(i, "builtin/mlp", 1, i * 0.1, i * 0.1, 0.01, OK, 0, 1, 1.0)
               for i in range(10)]
    summary = summarize(records, duration=4.0, promises=Promises(max_lost_requests=0),
                        interrupted=True)
    console = Console(record=True, width=200)
    console.print(render_summary(summary, title="simnet x"))
    text = console.export_text()
    assert "FAIL" not in text
    assert "PASS" not in text
    assert "not judged" in text
    assert "2.5 req/s over 4 s" in text  # over the time run


def test_virtual_prints_one_prefix_and_counts_as_its_summary(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert swarm_main(["simnet", "virtual", "--nodes", "8", "--clients", "4", "--duration", "20",
                       "--report", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    assert "virtual: virtual" not in err + out
    assert err.startswith("simnet virtual: 8 providers")
    last = [line for line in err.splitlines() if "requests" in line][-1]
    progress = re.search(r"requests (\d+) sent, (\d+) ok, (\d+) lost", last)
    summary = re.search(r"(\d+) sent, (\d+) ok, (\d+) lost", out)
    assert progress is not None, err
    assert summary is not None, out
    assert progress.groups() == summary.groups()
