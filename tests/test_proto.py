"""Generated protobuf code is fresh, and coexists with other OIP packages in one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "swarm" / "_proto"


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "_proto"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(out)],
                   check=True, cwd=ROOT, timeout=120)
    fresh, committed = _files(out), _files(GENERATED)
    hint = "run: .venv/bin/python scripts/gen_proto.py"
    missing = sorted(set(fresh) - set(committed))
    extra = sorted(set(committed) - set(fresh))
    stale = sorted(name for name in set(fresh) & set(committed) if fresh[name] != committed[name])
    assert not missing, f"swarm/_proto lacks generated files {missing}; {hint}"
    assert not extra, f"swarm/_proto has files the generator does not make {extra}; {hint}"
    assert not stale, f"stale generated files in swarm/_proto: {stale}; {hint}"


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_swarm_protos_coexist_with_tritonclient_either_import_order() -> None:
    use_both = (
        "from swarm._proto.inference import grpc_service_pb2 as pb\n"
        "import tritonclient.grpc.service_pb2 as tpb\n"
        "a = pb.ModelInferRequest(model_name='m'); b = tpb.ModelInferRequest(model_name='m')\n"
        "assert a.SerializeToString() == b.SerializeToString()\n"
        "assert pb.DESCRIPTOR.pool is not tpb.DESCRIPTOR.pool\n"
        "print('ok')\n"
    )
    assert _run("import tritonclient.grpc\nimport swarm.client\n" + use_both) == "ok"
    assert _run("import swarm.client\nimport tritonclient.grpc\n" + use_both) == "ok"
