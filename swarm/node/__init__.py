"""The provider agent `swarm-node`.

_node.py      Node: lifecycle (start, serve, drain on SIGTERM), gRPC + metrics servers
_service.py   Open Inference Protocol servicer and swarm.v1.NodeService; request checks
_gateway.py   forwarding for models served elsewhere; the OpenAI-compatible HTTP API
_rest.py      the Open Inference Protocol over HTTP (KServe v2 REST, Triton binary tensors)
_batching.py  dynamic batching: the pure policy `decide` and the asyncio Batcher
_runtime.py   Model, TorchModel; device and thread selection
_builtins.py  builtin/minilm (all-MiniLM-L6-v2) and builtin/mlp
_export.py    torch.export programs as served models (loading is swarm.modelfile's)
_models.py    ServedModel, ModelTable (name/version lookup), loading by reference
_cache.py     response cache (bounded LRU)
_ledger.py    the staking ledger on the node (--genesis): store, gossip, sync on join,
              LedgerService, the timekeeper's ticks, payments taken and claimed
_metrics.py   Prometheus metrics
_config.py    NodeConfig: TOML + environment + flags
_certs.py     the TLS listeners' certificate (identity-bound or the operator's) and its rotation
_hardware.py  device and memory detection
_cli.py       `swarm-node` command line
_autoscaler.py the demand signal adverts carry (DemandMeter) and the autoscaling driver
              (Autoscaler: swarm.autoscale.decide every interval, through an AutoscaleHost)
_replicas.py  local replicas: Replicas runs swarm.autoscale.decide_local every interval per
              served model and adds an instance on a free device or retires one

Names are imported on first use, so `swarm-node --help` and the batching policy
(`decide`, which the simulator runs) and the autoscaling driver do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarm._types import ModelSpec, TensorSpec
    from swarm.node._autoscaler import AutoscaleHost, Autoscaler, ScalingEvent
    from swarm.node._batching import (
        ARRIVAL_GAP_WEIGHT,
        TIMING_WEIGHT,
        BatchPolicy,
        Dispatch,
        QueueView,
        Wait,
        decide,
    )
    from swarm.node._builtins import MLP_DIMS, mlp_module
    from swarm.node._cli import main
    from swarm.node._config import ModelOptions, NodeConfig, load_config
    from swarm.node._node import Node, NodeState
    from swarm.node._replicas import ReplicaEvent, ReplicaHost, Replicas
    from swarm.node._runtime import Model

_WHERE = {
    "ARRIVAL_GAP_WEIGHT": "swarm.node._batching",
    "TIMING_WEIGHT": "swarm.node._batching",
    "AutoscaleHost": "swarm.node._autoscaler",
    "Autoscaler": "swarm.node._autoscaler",
    "ScalingEvent": "swarm.node._autoscaler",
    "BatchPolicy": "swarm.node._batching",
    "Dispatch": "swarm.node._batching",
    "MLP_DIMS": "swarm.node._builtins",
    "Model": "swarm.node._runtime",
    "ModelOptions": "swarm.node._config",
    "ModelSpec": "swarm._types",
    "Node": "swarm.node._node",
    "NodeConfig": "swarm.node._config",
    "NodeState": "swarm.node._node",
    "QueueView": "swarm.node._batching",
    "ReplicaEvent": "swarm.node._replicas",
    "ReplicaHost": "swarm.node._replicas",
    "Replicas": "swarm.node._replicas",
    "TensorSpec": "swarm._types",
    "Wait": "swarm.node._batching",
    "decide": "swarm.node._batching",
    "load_config": "swarm.node._config",
    "main": "swarm.node._cli",
    "mlp_module": "swarm.node._builtins",
}

__all__ = [
    "ARRIVAL_GAP_WEIGHT",
    "MLP_DIMS",
    "TIMING_WEIGHT",
    "AutoscaleHost",
    "Autoscaler",
    "BatchPolicy",
    "Dispatch",
    "Model",
    "ModelOptions",
    "ModelSpec",
    "Node",
    "NodeConfig",
    "NodeState",
    "QueueView",
    "ReplicaEvent",
    "ReplicaHost",
    "Replicas",
    "ScalingEvent",
    "TensorSpec",
    "Wait",
    "decide",
    "load_config",
    "main",
    "mlp_module",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'swarm.node' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
