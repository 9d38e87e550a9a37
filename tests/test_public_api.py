"""The public surface, pinned: a change here is a change to what users can rely on."""

from __future__ import annotations

import subprocess
import sys

import swarm
import swarm.client
import swarm.node

ERRORS = {
    "ClosedError", "ConfigError", "ConflictError", "DataLossError", "DeadlineExceededError",
    "InferenceError", "IntegrityError", "InvalidInputError", "InvalidReferenceError",
    "ModelLoadError", "ModelNotFoundError", "NoProviderError", "OverloadedError",
    "PermissionDeniedError", "SwarmError", "UnavailableError", "UnsafeModelError",
}


def test_swarm_exports() -> None:
    assert set(swarm.__all__) == ERRORS | {
        "AsyncClient", "Client", "Digest", "ModelInfo", "ModelRef", "PeerId", "TensorInfo",
        "__version__",
    }


def test_swarm_node_exports() -> None:
    assert set(swarm.node.__all__) == {
        "ARRIVAL_GAP_WEIGHT", "TIMING_WEIGHT", "MLP_DIMS", "AutoscaleHost", "Autoscaler",
        "BatchPolicy", "Dispatch", "Model",
        "ModelOptions", "ModelSpec", "Node", "NodeConfig", "NodeState", "QueueView",
        "ReplicaEvent", "ReplicaHost", "Replicas", "ScalingEvent", "TensorSpec", "Wait", "decide",
        "load_config", "main", "mlp_module",
    }


def test_swarm_routing_exports() -> None:
    import swarm.routing

    assert set(swarm.routing.__all__) == {
        "ADMISSION_HEADER", "BUILTIN_DIGESTS", "DEPTH_TRAILER", "FORWARDED", "MAX_MESSAGE_BYTES",
        "Caller", "GrpcCaller",
        "ProviderWeight", "Resolver", "Routed", "Router", "RoutingOptions", "SignedNames",
        "SignedTags", "StreamWatch", "error_from_rpc", "one_per_provider", "status_of"}


def test_swarm_autoscale_exports() -> None:
    import swarm.autoscale

    assert set(swarm.autoscale.__all__) == {
        "Action", "ActionKind", "AutoscaleConfig", "Decision", "Direction", "LocalConfig",
        "LocalDecision", "LocalLoad", "LocalTrend", "ModelDemand", "SelfState", "Trend",
        "allowed", "decide", "decide_local", "replica_load", "supply_and_demand"}


def test_swarm_modelfile_exports() -> None:
    import swarm.modelfile

    assert set(swarm.modelfile.__all__) == {
        "BUILTIN_TOLERANCES", "MAX_ARCHIVE_BYTES", "MAX_UNPACKED_BYTES", "check_archive",
        "load_program", "oip_datatype", "parse_tolerance", "program_spec"}


def test_swarm_cli_exports() -> None:
    import swarm.cli

    assert swarm.cli.__all__ == ["main"]


def test_every_front_exports_what_it_names() -> None:
    import importlib

    for name in ("swarm.protocol", "swarm.protocol.testing", "swarm.modelfile", "swarm.staking",
                 "swarm.scheduler", "swarm.routing", "swarm.registry", "swarm.autoscale", "swarm.node",
                 "swarm.client", "swarm.simnet", "swarm.cli"):
        module = importlib.import_module(name)
        assert len(module.__all__) == len(set(module.__all__)), name
        for attr in module.__all__:
            assert getattr(module, attr) is not None, f"{name}.{attr}"


def test_protocol_front_does_not_import_libp2p() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import swarm.protocol, sys; print('libp2p' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


def test_batching_policy_does_not_import_torch() -> None:
    code = "from swarm.node import decide, BatchPolicy; import sys; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False"


def test_swarm_client_exports() -> None:
    assert set(swarm.client.__all__) == {
        "DEFAULT_VERIFY_FRACTION", "AsyncClient", "Client", "GenerationChunk", "ModelInfo",
        "TensorInfo", "Verdict",
        "Verifier", "judge", "send_verified", "should_verify"}


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
                 "DeadlineExceededError", "UnavailableError", "PermissionDeniedError",
                 "ConflictError", "DataLossError"):
        assert issubclass(getattr(swarm, name), swarm.InferenceError)
    assert issubclass(swarm.DataLossError, swarm.IntegrityError)
    assert issubclass(swarm.InvalidReferenceError, ValueError)


def test_import_swarm_does_not_import_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import swarm, sys; print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


def test_swarm_simnet_exports() -> None:
    import swarm.simnet

    assert set(swarm.simnet.__all__) == {
        "CheaterResult", "CheaterSettings", "cheater_table", "run_cheater",
        "Cluster", "ClusterConfig", "DeadlockError", "VirtualResult", "VirtualSettings",
        "NodeHandle", "NodeStatus",
        "RoundRobinRouter", "RoutedResult", "Router", "RunOptions", "RunResult", "Scenario",
        "VirtualClock", "VirtualTimeError", "VirtualTimeLoop", "load_scenario", "parse_scenario",
        "run_virtual_swarm", "run_scenario", "run_virtual", "start_cluster",
        "default_virtual_scenario", "write_virtual_report", "render_summary", "validate"}
