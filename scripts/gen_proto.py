"""Generate swarm/_proto from proto/ (run by scripts/test; a test checks it is fresh).

The generated modules register their descriptors in a private pool
(swarm._proto._pool.POOL) instead of protobuf's default pool: the default pool
refuses a second definition of `inference.ModelInferRequest`, which NVIDIA's
tritonclient and KServe's packages already register, and a user must be able to
import swarm beside them.

Usage: python scripts/gen_proto.py [OUT_DIR]   (default: swarm/_proto)
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE = "swarm._proto"

POOL_MODULE = '''"""Descriptor pool of every generated module in swarm._proto (scripts/gen_proto.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''

INIT_MODULE = '"""Generated protobuf and gRPC code; never edited by hand (scripts/gen_proto.py)."""\n'


def _rewrite(text: str, top_packages: set[str]) -> str:
    tops = "|".join(sorted(top_packages))
    text = re.sub(rf"^from ({tops})((?:\.\w+)*) import", rf"from {PACKAGE}.\1\2 import", text,
                  flags=re.MULTILINE)
    text = text.replace(
        "_descriptor_pool.Default().AddSerializedFile(",
        "_swarm_pool.POOL.AddSerializedFile(",
    )
    if "_swarm_pool.POOL" in text:
        text = text.replace(
            "from google.protobuf import descriptor_pool as _descriptor_pool\n",
            "from google.protobuf import descriptor_pool as _descriptor_pool\n"
            f"from {PACKAGE} import _pool as _swarm_pool\n",
            1,
        )
    return text


def generate(out: Path) -> None:
    protos = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))
    top_packages = {p.split("/")[0] for p in protos}
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / "__init__.py").write_text(INIT_MODULE)
        (out / "_pool.py").write_text(POOL_MODULE)
        for src in sorted(Path(tmp).rglob("*.py*")):
            rel = src.relative_to(tmp)
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            for parent in rel.parents:
                if parent != Path("."):
                    init = out / parent / "__init__.py"
                    if not init.exists():
                        init.write_text(INIT_MODULE)
            dst.write_text(_rewrite(src.read_text(), top_packages))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "swarm" / "_proto")
