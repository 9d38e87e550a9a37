"""The public surface, pinned: a change here is a change to what users can rely on."""

from __future__ import annotations

import subprocess
import sys

import swarm
import swarm.client
import swarm.node

ERRORS = {
    "ConfigError", "DeadlineExceededError", "InferenceError", "IntegrityError",
    "InvalidInputError", "ModelLoadError", "ModelNotFoundError", "NoProviderError",
    "OverloadedError", "SwarmError", "UnavailableError", "UnsafeModelError",
}


def test_swarm_exports() -> None:
    assert set(swarm.__all__) == ERRORS | {
        "AsyncClient", "Client", "Digest", "ModelInfo", "ModelRef", "PeerId", "TensorInfo",
        "__version__",
    }


def test_swarm_node_exports() -> None:
    assert set(swarm.node.__all__) == {
        "BatchPolicy", "Model", "ModelOptions", "ModelSpec", "Node", "NodeConfig", "NodeState",
        "TensorSpec", "decide", "load_config",
    }


def test_swarm_client_exports() -> None:
    assert set(swarm.client.__all__) == {"AsyncClient", "Client", "ModelInfo", "TensorInfo"}


def test_exported_names_exist_and_are_unique() -> None:
    for module in (swarm, swarm.node, swarm.client):
        assert len(module.__all__) == len(set(module.__all__)), module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_every_error_derives_from_swarm_error() -> None:
    for name in ERRORS:
        assert issubclass(getattr(swarm, name), swarm.SwarmError)
    assert issubclass(swarm.UnsafeModelError, swarm.ModelLoadError)
    for name in ("InvalidInputError", "ModelNotFoundError", "OverloadedError",
                 "DeadlineExceededError", "UnavailableError"):
        assert issubclass(getattr(swarm, name), swarm.InferenceError)


def test_import_swarm_does_not_import_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import swarm, sys; print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


def test_swarm_simnet_exports() -> None:
    import swarm.simnet

    assert set(swarm.simnet.__all__) == {
        "Cluster", "ClusterConfig", "DeadlockError", "ModelResult", "ModelSettings",
        "NodeHandle", "NodeStatus",
        "RoundRobinRouter", "RoutedResult", "Router", "RunOptions", "RunResult", "Scenario",
        "VirtualClock", "VirtualTimeError", "VirtualTimeLoop", "load_scenario", "parse_scenario",
        "run_model", "run_scenario", "run_virtual", "start_cluster"}
