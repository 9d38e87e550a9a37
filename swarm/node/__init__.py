"""The provider agent `swarm-node`.

_node.py      Node: lifecycle (start, serve, drain on SIGTERM), gRPC + metrics servers
_service.py   Open Inference Protocol servicer and swarm.v1.NodeService; request checks
_batching.py  dynamic batching: the pure policy `decide` and the asyncio Batcher
_runtime.py   Model, ModelSpec, TensorSpec; device selection
_builtins.py  builtin/minilm (all-MiniLM-L6-v2) and builtin/mlp
_export.py    safe loading of torch.export programs (.pt2)
_models.py    ServedModel, ModelTable (name/version lookup), loading by reference
_cache.py     response cache (bounded LRU)
_metrics.py   Prometheus metrics
_config.py    NodeConfig: TOML + environment + flags
_hardware.py  device and memory detection
_cli.py       `swarm-node` command line
"""

from swarm.node._batching import BatchPolicy, decide
from swarm.node._config import ModelOptions, NodeConfig, load_config
from swarm.node._node import Node, NodeState
from swarm.node._runtime import Model, ModelSpec, TensorSpec

__all__ = [
    "BatchPolicy",
    "Model",
    "ModelOptions",
    "ModelSpec",
    "Node",
    "NodeConfig",
    "NodeState",
    "TensorSpec",
    "decide",
    "load_config",
]
