"""The layer order of swarm's packages, enforced on the source (ARCHITECTURE.md, README).

Each package may import the shared vocabulary (`swarm._*` modules) and packages
below it in LAYERS, and those only through their `__init__` fronts (and their
explicit `testing` modules); never a package above it, never another package's
private `_module`. Imports inside functions count too: a cycle hidden in a
function is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "swarm"

# Lowest first. A package may import only the packages before it.
LAYERS = (
    "protocol",
    "modelfile",
    "scheduler",
    "routing",
    "staking",
    "registry",
    "autoscale",
    "node",
    "client",
    "simnet",
    "cli",
)
# Public modules of a package that others may import besides its front.
PUBLIC_MODULES = {"testing"}
# The shared vocabulary: no I/O, imports no package (generated code is vocabulary too).
SHARED = {"_types", "_errors", "_clock", "_tensors", "_logging", "_proto", "__init__"}


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # `from swarm.x import _y` imports module _y
                yield node.lineno, f"{node.module}.{alias.name}"


def _owner(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


def violations() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        owner = _owner(path)
        if owner == "_proto":
            continue
        for line, name in _imports(path):
            parts = name.split(".")
            if parts[0] != "swarm" or len(parts) < 2:
                continue
            target = parts[1]
            if target.startswith("__"):  # swarm.__version__
                continue
            where = f"{path.relative_to(ROOT.parent)}:{line} imports {name}"
            if target == owner:
                continue
            if target in SHARED:
                if owner in SHARED or owner == "__init__":
                    continue
                if target.startswith("_") and len(parts) > 2 and parts[2].startswith("_") \
                        and target != "_proto":
                    found.append(f"{where}: private part of the shared vocabulary")
                continue
            if target not in LAYERS:
                found.append(f"{where}: {target} is not in the layer order")
                continue
            if owner in SHARED and owner != "__init__":
                found.append(f"{where}: the shared vocabulary imports no package")
                continue
            if owner in LAYERS and LAYERS.index(target) >= LAYERS.index(owner):
                found.append(f"{where}: {owner} is below {target}")
                continue
            if len(parts) > 2 and parts[2].startswith("_"):
                found.append(f"{where}: private module of another package")
            elif len(parts) > 2 and parts[2] not in PUBLIC_MODULES and (
                    ROOT / target / f"{parts[2]}.py").exists():
                found.append(f"{where}: not through the package's front")
    return found


def test_every_package_is_in_the_layer_order() -> None:
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert packages <= set(LAYERS), packages - set(LAYERS)


def test_packages_import_only_downward_and_through_fronts() -> None:
    found = violations()
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("owner", "target", "ok"), [
    ("node", "swarm.routing", True),
    ("routing", "swarm.node", False),
    ("registry", "swarm.protocol._identity", False),
    ("cli", "swarm.simnet", True),
])
def test_the_checker_itself(tmp_path: Path, owner: str, target: str, ok: bool,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule catches what it must (a checker that never fails proves nothing)."""
    root = tmp_path / "swarm"
    (root / owner).mkdir(parents=True)
    (root / owner / "_x.py").write_text(f"def f():\n    import {target}\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    assert (not violations()) is ok


# What `swarm --help` (and building its parser) must not import: each costs 0.1-2 s, and the
# help of both commands is to answer in under 0.5 s. Subcommands import them to run.
HELP_MUST_NOT_IMPORT = ("torch", "libp2p", "trio", "numpy", "grpc", "swarm.client",
                        "swarm.registry", "swarm.protocol")


def test_swarm_help_imports_nothing_heavy() -> None:
    code = ("import sys, runpy\nsys.argv = ['swarm', '--help']\n"
            "try:\n    runpy.run_module('swarm.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HELP_MUST_NOT_IMPORT!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
